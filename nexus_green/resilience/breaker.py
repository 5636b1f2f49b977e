"""The circuit breaker (layer L4): pybreaker's interface, fixed for gevent.

:class:`CircuitBreaker` subclasses :class:`pybreaker.CircuitBreaker`, so the
state names (``'closed'``, ``'open'``, ``'half-open'``), the listener interface
(:class:`CircuitBreakerListener`), :class:`CircuitBreakerError` and the storage
abstraction (:class:`CircuitMemoryStorage`, :class:`CircuitRedisStorage`) work
as pybreaker users expect. What changes:

* pybreaker holds its lock across the protected call, which serialises every
  greenlet once the app has monkey-patched. Here admission
  (:meth:`CircuitBreaker.admit`) and recording (:meth:`CircuitBreaker.record`)
  take a ``gevent.lock.RLock``; the call itself runs outside it.
* Opening conditions, each configurable (None disables it): failure rate
  above 50% in a 10 s sliding window of 1 s buckets once ``minimum_calls``
  calls are in it; slow-call rate (timeouts, and calls slower than
  ``slow_call_duration`` when set) above 30%; more than 5 consecutive failures.
* Exceptions are classified as failure, ignored or success by configuration.
* Half-open admits ``half_open_calls`` trial calls (5) and rejects the rest; 3
  successes close it, 2 failures reopen it. Results of calls admitted under an
  earlier state (an older *generation*) are discarded.
* The open duration starts at ``reset_timeout`` (1 s), grows with repeated
  openings (``reset_backoff``, x2), is capped at ``max_reset_timeout`` (3 s
  by default) and jittered down by up to ``reset_jitter``: a backend that
  comes back gets trial calls within 3 s, however long it was down.
* The error raised on rejection, :class:`CircuitBreakerOpen`, is both a
  :class:`nexus_green.errors.CircuitOpen` and a
  :class:`pybreaker.CircuitBreakerError`.

All transitions are in :data:`TRANSITIONS` (plus the forced ones:
:meth:`~CircuitBreaker.open`, :meth:`~CircuitBreaker.close`,
:meth:`~CircuitBreaker.half_open`, and adopting a state another process wrote
to shared storage).

Events (on the injected :class:`~nexus_green.events.EventBus`):

* ``breaker.state`` [breaker, old, new, reason, open_for, openings]
* ``breaker.call`` [breaker, state, outcome, duration, slow, calls, failures,
  slow_calls, failure_rate, slow_rate]; outcome is success, failure, ignored
  or discarded
* ``breaker.rejected`` [breaker, state, retry_after]

Example::

    >>> from nexus_green.clock import FakeClock
    >>> cb = CircuitBreaker(name="db", clock=FakeClock(), max_consecutive_failures=1, reset_jitter=0)
    >>> def boom(): raise ConnectionError("down")
    >>> for _ in range(2):
    ...     try: cb.call(boom)
    ...     except ConnectionError: pass
    >>> cb.current_state
    'open'
    >>> try: cb.call(lambda: 1)
    ... except CircuitBreakerError as e: print(type(e).__name__, e.retry_after)
    CircuitBreakerOpen 1.0
"""

from __future__ import annotations

import contextlib
import functools
import logging
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Optional, TypeVar, Union, overload

import gevent.lock
import pybreaker
from greenlet import getcurrent
from pybreaker import (
    STATE_CLOSED,
    STATE_HALF_OPEN,
    STATE_OPEN,
    CircuitBreakerError,
    CircuitBreakerListener,
    CircuitBreakerState,
    CircuitBreakerStorage,
    CircuitMemoryStorage,
    CircuitRedisStorage,
)

from ..clock import SYSTEM_CLOCK, Clock
from ..decorating import check_options, config_fields, is_bare
from ..errors import CircuitOpen, ConfigurationError, NexusTimeout
from ..events import EventBus, default_bus
from .budget import options_into
from .window import BucketedCounts

__all__ = [
    "STATE_CLOSED",
    "STATE_OPEN",
    "STATE_HALF_OPEN",
    "TRANSITIONS",
    "BreakerConfig",
    "CircuitBreaker",
    "CircuitBreakerOpen",
    "CircuitBreakerError",
    "CircuitBreakerListener",
    "CircuitBreakerStorage",
    "CircuitMemoryStorage",
    "CircuitRedisStorage",
    "Ticket",
    "WindowFigures",
    "circuit_breaker",
]

log = logging.getLogger("nexus_green.resilience.breaker")

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

SUCCESS, FAILURE, IGNORED, DISCARDED = "success", "failure", "ignored", "discarded"

#: Every automatic transition: (state, trigger) -> new state.
TRANSITIONS: Mapping[tuple[str, str], str] = {
    (STATE_CLOSED, "trip"): STATE_OPEN,
    (STATE_OPEN, "reset_timeout"): STATE_HALF_OPEN,
    (STATE_HALF_OPEN, "trial_failed"): STATE_OPEN,
    (STATE_HALF_OPEN, "trial_passed"): STATE_CLOSED,
}

ExceptionMatcher = Union[type, Callable[[BaseException], bool]]

#: The open duration's cap when ``max_reset_timeout`` is None (and ``reset_timeout`` is shorter).
DEFAULT_RESET_CAP = 3.0


class CircuitBreakerOpen(CircuitOpen, CircuitBreakerError):
    """The breaker refused the call: open, or half-open with every trial slot taken.

    Catchable as :class:`nexus_green.errors.CircuitOpen` and as
    :class:`pybreaker.CircuitBreakerError`. ``retry_after`` is seconds until the
    breaker lets trial calls through (0 when half-open).

    Example::

        >>> e = CircuitBreakerOpen("open", breaker="db", state="open", retry_after=3.0)
        >>> isinstance(e, CircuitOpen), isinstance(e, CircuitBreakerError), e.retryable
        (True, True, False)
    """

    def __init__(
        self, message: str = "", *, breaker: str = "", state: str = STATE_OPEN, retry_after: float = 0.0
    ) -> None:
        super().__init__(message)
        self.breaker = breaker
        self.state = state
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True, kw_only=True)
class BreakerConfig:
    """Circuit breaker settings (None disables an opening condition).

    Example::

        >>> c = BreakerConfig()
        >>> c.failure_rate_threshold, c.slow_call_rate_threshold, c.max_consecutive_failures, c.window
        (0.5, 0.3, 5, 10.0)
        >>> BreakerConfig(half_open_successes=6)
        Traceback (most recent call last):
        ...
        nexus_green.errors.ConfigurationError: half_open_successes (6) and half_open_failures (2) must each be between 1 and half_open_calls (5)
    """

    name: str = "default"
    failure_rate_threshold: Optional[float] = 0.5
    slow_call_rate_threshold: Optional[float] = 0.3
    slow_call_duration: Optional[float] = None
    max_consecutive_failures: Optional[int] = 5
    minimum_calls: int = 10
    window: float = 10.0
    bucket_width: float = 1.0
    half_open_calls: int = 5
    half_open_successes: int = 3
    half_open_failures: int = 2
    reset_timeout: float = 1.0
    reset_backoff: float = 2.0
    max_reset_timeout: Optional[float] = None
    reset_jitter: float = 0.1
    failure_exceptions: tuple[ExceptionMatcher, ...] = (Exception,)
    ignore_exceptions: tuple[ExceptionMatcher, ...] = ()
    success_exceptions: tuple[ExceptionMatcher, ...] = ()
    slow_exceptions: tuple[type, ...] = (NexusTimeout, TimeoutError)
    throw_new_error_on_trip: bool = False

    def __post_init__(self) -> None:
        for rate_name in ("failure_rate_threshold", "slow_call_rate_threshold"):
            rate = getattr(self, rate_name)
            if rate is not None and not 0 <= rate <= 1:
                raise ConfigurationError(f"{rate_name} must be between 0 and 1, got {rate}")
        if self.max_consecutive_failures is not None and self.max_consecutive_failures < 0:
            raise ConfigurationError(f"max_consecutive_failures must be >= 0, got {self.max_consecutive_failures}")
        if self.minimum_calls < 1:
            raise ConfigurationError(f"minimum_calls must be >= 1, got {self.minimum_calls}")
        if self.half_open_calls < 1:
            raise ConfigurationError(f"half_open_calls must be >= 1, got {self.half_open_calls}")
        if not (
            1 <= self.half_open_successes <= self.half_open_calls
            and 1 <= self.half_open_failures <= self.half_open_calls
        ):
            raise ConfigurationError(
                f"half_open_successes ({self.half_open_successes}) and half_open_failures "
                f"({self.half_open_failures}) must each be between 1 and half_open_calls ({self.half_open_calls})"
            )
        if not 0 < self.reset_timeout <= self.reset_cap:
            raise ConfigurationError(
                f"reset_timeout ({self.reset_timeout}) must be > 0 and <= max_reset_timeout ({self.max_reset_timeout})"
            )
        if self.reset_backoff < 1:
            raise ConfigurationError(f"reset_backoff must be >= 1, got {self.reset_backoff}")
        if not 0 <= self.reset_jitter < 1:
            raise ConfigurationError(f"reset_jitter must be in [0, 1), got {self.reset_jitter}")
        if self.slow_call_duration is not None and not self.slow_call_duration > 0:
            raise ConfigurationError(f"slow_call_duration must be > 0, got {self.slow_call_duration}")

    @property
    def reset_cap(self) -> float:
        """The longest open duration: ``max_reset_timeout``, or when None, 3 s or ``reset_timeout`` if longer.

        The defaults (1 s, doubling, capped at 3 s) let trial calls reach a
        restarted backend within 3 s of its return however long it was down,
        leaving room for the pool's reconnect (about 1 s once a caller asks)
        inside 5 s. A ``reset_timeout`` longer than 3 s given alone (a
        pybreaker habit) is used as is, without growth.

        Example::

            >>> BreakerConfig().reset_cap, BreakerConfig(reset_timeout=30).reset_cap
            (3.0, 30.0)
            >>> BreakerConfig(max_reset_timeout=60).reset_cap
            60.0
        """
        if self.max_reset_timeout is not None:
            return float(self.max_reset_timeout)
        return float(max(DEFAULT_RESET_CAP, self.reset_timeout))


@dataclass(frozen=True, slots=True, kw_only=True)
class Ticket:
    """An admitted call: the breaker generation and state it was admitted under, and its start time."""

    generation: int
    state: str
    started: float


@dataclass(frozen=True, slots=True, kw_only=True)
class WindowFigures:
    """Calls, failures and slow calls in the sliding window, and their rates."""

    calls: int
    failures: int
    slow: int

    @property
    def failure_rate(self) -> float:
        """failures / calls (0.0 with no calls)."""
        return self.failures / self.calls if self.calls else 0.0

    @property
    def slow_rate(self) -> float:
        """slow / calls (0.0 with no calls)."""
        return self.slow / self.calls if self.calls else 0.0


class _GreenRLock:
    """A reentrant lock per greenlet on a ``gevent.lock.Semaphore``: gevent's RLock, minus its layers.

    Admission and recording take it on every call, so it is kept to a
    ``getcurrent()`` and a C-level semaphore operation. Another greenlet (or
    thread) waits on the semaphore cooperatively.
    """

    __slots__ = ("_sem", "_owner", "_count")

    def __init__(self) -> None:
        self._sem = gevent.lock.Semaphore(1)
        self._owner: Any = None
        self._count = 0

    def __enter__(self) -> None:
        me = getcurrent()
        if self._owner is me:
            self._count += 1
            return
        self._sem.acquire()
        self._owner = me
        self._count = 1

    def __exit__(self, *exc_info: object) -> None:
        self._count -= 1
        if not self._count:
            self._owner = None
            self._sem.release()

    def locked(self) -> bool:
        """True while some greenlet holds it."""
        return self._owner is not None


def _matches(exc: BaseException, matchers: Sequence[ExceptionMatcher]) -> bool:
    for m in matchers:
        if isinstance(m, type):
            if isinstance(exc, m):
                return True
        elif m(exc):
            return True
    return False


_BREAKER_EXTRA = (
    "clock",
    "rng",
    "bus",
    "listeners",
    "state_storage",
    "exclude",
    "fail_max",
    "success_threshold",
    "shared",
    "shared_sync",
)


def _pybreaker_names(options: dict[str, Any]) -> None:
    # pybreaker's option names, accepted: fail_max=N opens on the Nth consecutive
    # failure (max_consecutive_failures=N-1); success_threshold is half_open_successes.
    for theirs, ours in (("fail_max", "max_consecutive_failures"), ("success_threshold", "half_open_successes")):
        if theirs not in options:
            continue
        if ours in options:
            raise ConfigurationError(f"give {theirs}= (pybreaker's name) or {ours}=, not both")
        value = options.pop(theirs)
        if theirs == "fail_max":
            if not isinstance(value, int) or value < 1:
                raise ConfigurationError(f"fail_max must be an int >= 1, got {value!r}")
            value -= 1
        options[ours] = value


class CircuitBreaker(pybreaker.CircuitBreaker):
    """A pybreaker-compatible breaker that never holds its lock across the call.

    Use it as ``breaker.call(fn, *args)``, as a decorator (``@breaker``), as
    ``with breaker.calling(): ...``, or drive it by hand with
    :meth:`admit` / :meth:`record`. Options are the fields of
    :class:`BreakerConfig`, given as a config, as keywords, or both;
    pybreaker's ``fail_max=N`` (open on the Nth consecutive failure,
    ``max_consecutive_failures=N-1``) and ``success_threshold`` are accepted.

    ``shared=`` (a ``redis://`` URL, a ``redis.Redis`` client or a
    :class:`~nexus_green.transport.redis.RedisLink`) shares the state and the
    sliding window with every process that names the same breaker:
    see :mod:`nexus_green.resilience.shared_breaker` (``shared_sync`` is the
    most seconds between two syncs with Redis, 0.1 by default). Its
    :class:`~nexus_green.resilience.shared_breaker.SharedBreakerStorage` is
    :attr:`shared` (None for a local breaker).

    Example::

        >>> from nexus_green.clock import FakeClock
        >>> cb = CircuitBreaker(name="svc", clock=FakeClock(), minimum_calls=4, max_consecutive_failures=None)
        >>> for ok in (True, False, False, False):
        ...     t = cb.admit()
        ...     _ = cb.record(t, None if ok else ValueError("bad"))
        >>> cb.current_state, cb.figures().failure_rate
        ('open', 0.75)
    """

    _ready = False

    def __init__(
        self,
        config: Optional[BreakerConfig] = None,
        *,
        clock: Clock = SYSTEM_CLOCK,
        rng: Optional[random.Random] = None,
        bus: EventBus = default_bus,
        listeners: Sequence[CircuitBreakerListener] = (),
        state_storage: Optional[CircuitBreakerStorage] = None,
        exclude: Sequence[ExceptionMatcher] = (),
        shared: Any = None,
        shared_sync: Optional[float] = None,
        **options: Any,
    ) -> None:
        _pybreaker_names(options)
        cfg: BreakerConfig = options_into(config or BreakerConfig(), options, "circuit breaker", _BREAKER_EXTRA)
        self.shared: Any = None
        if shared is not None:
            if state_storage is not None:
                raise ConfigurationError("give state_storage= or shared=, not both")
            # redis-py is an optional extra: imported only when a shared breaker is asked for.
            from ..transport.redis import redis_link
            from .shared_breaker import DEFAULT_SYNC_INTERVAL, SharedBreakerStorage

            state_storage = self.shared = SharedBreakerStorage(
                redis_link(shared, clock=clock),
                cfg.name,
                window=cfg.window,
                bucket_width=cfg.bucket_width,
                reset_timeout=cfg.reset_timeout,
                sync_interval=DEFAULT_SYNC_INTERVAL if shared_sync is None else shared_sync,
                clock=clock,
            )
        elif shared_sync is not None:
            raise ConfigurationError("shared_sync= applies to a shared breaker only: give shared= too")
        super().__init__(
            fail_max=(cfg.max_consecutive_failures + 1) if cfg.max_consecutive_failures is not None else 0,
            reset_timeout=cfg.reset_timeout,
            success_threshold=cfg.half_open_successes,
            exclude=list(exclude),
            listeners=list(listeners),
            state_storage=state_storage,
            name=cfg.name,
            throw_new_error_on_trip=cfg.throw_new_error_on_trip,
        )
        # pybreaker's threading.RLock would block the whole hub when it is
        # contended in an unpatched app; admission and recording never yield
        # unless a storage does I/O, so a gevent lock is the right one.
        self._lock = _GreenRLock()  # type: ignore[assignment]
        self.config = cfg
        self._clock = clock
        self._rng = rng or random.Random()
        self._bus = bus
        self._window = BucketedCounts(window=cfg.window, width=cfg.bucket_width, fields=3, clock=clock)
        self._generation = 0
        self._known = self._state_storage.state
        self._open_until: Optional[float] = None
        self._openings = 0
        self._trials_admitted = 0
        self._trial_failures = 0
        # pybreaker's in-memory storage: the fast path may reset its counter directly.
        self._plain_storage = type(self._state_storage) is CircuitMemoryStorage
        # admit_closed()'s answer to "may a call skip the duration and the events?", per bus version.
        self._fast_version = -1
        self._fast_ok = False
        self._ready = True

    # --- pure decisions -------------------------------------------------------------
    def classify(self, exc: Optional[BaseException]) -> str:
        """'success', 'failure' or 'ignored' for a call that raised ``exc`` (None: returned).

        Exceptions that are not ``Exception`` (GreenletExit from a hedge that
        lost, someone else's gevent.Timeout) mean the call was cancelled: ignored.
        """
        if exc is None:
            return SUCCESS
        if not isinstance(exc, Exception) or _matches(exc, self.config.ignore_exceptions):
            return IGNORED
        if _matches(exc, self.config.success_exceptions) or not self.is_system_error(exc):
            return SUCCESS
        if _matches(exc, self.config.failure_exceptions):
            return FAILURE
        return SUCCESS

    def _open_duration(self, openings: int) -> float:
        cfg = self.config
        grown = cfg.reset_timeout * cfg.reset_backoff ** min(openings - 1, 64)
        capped = min(cfg.reset_cap, grown)
        return capped * (1.0 - cfg.reset_jitter * self._rng.random())

    def _trip_reason(self) -> Optional[str]:
        cfg = self.config
        if cfg.max_consecutive_failures is not None and self._state_storage.counter > cfg.max_consecutive_failures:
            return "consecutive_failures"
        calls, failures, slow = self._window_totals()
        if calls >= cfg.minimum_calls:
            if cfg.failure_rate_threshold is not None and failures / calls > cfg.failure_rate_threshold:
                return "failure_rate"
            if cfg.slow_call_rate_threshold is not None and slow / calls > cfg.slow_call_rate_threshold:
                return "slow_call_rate"
        return None

    # --- state ----------------------------------------------------------------------
    def _open_deadline(self) -> float:
        if self._open_until is not None:
            return self._open_until
        # Opened by another process through shared storage: its wall-clock
        # opened_at plus the base reset timeout, mapped onto our clock.
        opened_at = self._state_storage.opened_at
        if opened_at is None:
            return self._clock.now()
        return opened_at.timestamp() + self.config.reset_timeout - self._clock.wall() + self._clock.now()

    def _window_totals(self) -> Sequence[int]:
        # Shared: the fleet's window as of the last sync plus this process's calls since; local while Redis
        # is not answering (or before the first sync).
        shared = self.shared
        if shared is not None and shared.fresh:
            return shared.totals()
        return self._window.totals()

    def _sync(self) -> str:
        shared = self.shared
        if shared is None:
            stored = self._state_storage.state
            if stored != self._known:
                self._enter(stored, "storage", write=False)
        elif shared.foreign:
            shared.foreign = False
            shared.adoptions += 1
            self._enter(shared.seen_state, "storage", write=False)
        elif shared.figures_changed:
            shared.figures_changed = False
            if self._known == STATE_CLOSED:
                reason = self._trip_reason()
                if reason is not None:
                    self._enter(TRANSITIONS[(STATE_CLOSED, "trip")], reason)
        if self._known == STATE_OPEN and self._clock.now() >= self._open_deadline():
            self._transition("reset_timeout")
        return self._known

    def _transition(self, trigger: str) -> None:
        self._enter(TRANSITIONS[(self._known, trigger)], trigger)

    def _enter(self, new: str, reason: str, *, write: bool = True) -> None:
        if new not in (STATE_CLOSED, STATE_OPEN, STATE_HALF_OPEN):
            raise ValueError(f"unknown circuit breaker state {new!r}")
        open_for: Optional[float] = None
        if write and new == STATE_OPEN:
            open_for = self._open_duration(self._openings + 1)
        shared = self.shared
        if shared is not None:
            if write and not shared.publish(new, None if open_for is None else self._clock.now() + open_for):
                # Another process changed the shared state first: its state wins.
                new, reason, write, open_for = shared.seen_state, "storage", False, None
            shared.reset_window()
        old, old_obj = self._known, self._state
        self._trials_admitted = 0
        self._trial_failures = 0
        storage = self._state_storage
        if new == STATE_OPEN:
            self._openings += 1
            if open_for is not None:
                self._open_until = self._clock.now() + open_for
                storage.opened_at = datetime.fromtimestamp(self._clock.wall(), tz=timezone.utc)
            elif shared is not None:
                # Opened by another process: until its shared deadline, mapped onto our clock.
                self._open_until = shared.open_until
                if self._open_until is None:
                    self._open_until = self._clock.now() + self.config.reset_timeout
            else:
                self._open_until = None
            storage.reset_success_counter()
        elif new == STATE_CLOSED:
            self._openings = 0
            self._open_until = None
            self._window.reset()
            storage.reset_counter()
            storage.reset_success_counter()
        else:
            self._open_until = None
            storage.reset_success_counter()
        if write or shared is not None:
            storage.state = new
        self._known = new
        # The generation changes only after the new state is in place: a
        # lock-free admission (:meth:`admit_closed`) that reads the generation
        # and then sees 'closed' was admitted either in that generation or
        # in a stale one whose result is discarded, never in a mixed state.
        self._generation += 1
        new_obj = self._create_new_state(new, prev_state=old_obj, notify=False)
        self._state = new_obj
        for listener in self._listeners:
            self._safe(listener.state_change, self, old_obj, new_obj)
        self._bus.emit(
            "breaker.state",
            breaker=self.name,
            old=old,
            new=new,
            reason=reason,
            open_for=open_for,
            openings=self._openings,
        )

    def _safe(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        try:
            fn(*args, **kwargs)
        except Exception:
            log.exception("circuit breaker %s: listener %r failed", self.name, fn)

    # --- admission and recording ----------------------------------------------------
    def admit_closed(self) -> int:
        """The lock-free admission of the fault-free case: the generation, or -1 to take :meth:`admit`.

        It admits only when the breaker is closed in pybreaker's in-memory
        storage and nobody needs the call's duration or outcome (no listener,
        no ``slow_call_duration``, no ``breaker.call`` subscriber): then a
        closed success is recorded with :meth:`record_closed_success`.

        No lock is needed because admission only *reads*: within one thread a
        gevent section without a yield is atomic, and against another thread
        the two reads are ordered so that a racing state change (see
        ``_enter``: the generation changes last) can only make this call's
        result stale, that is, discarded when it is recorded under the lock.

        Example::

            >>> cb = CircuitBreaker(name="x", bus=EventBus())
            >>> g = cb.admit_closed(); g == cb.generation
            True
            >>> cb.record_closed_success(g), cb.figures().calls
            (True, 1)
            >>> cb.open(); cb.admit_closed()
            False
            -1
        """
        if self._fast_version != self._bus.version:
            self._fast_version = self._bus.version
            self._fast_ok = (
                self._plain_storage and self.config.slow_call_duration is None and not self._bus.wants("breaker.call")
            )
        generation = self._generation
        if (
            self._fast_ok
            and not self._listeners
            and self._known == STATE_CLOSED
            and self._state_storage._state == STATE_CLOSED  # type: ignore[attr-defined]
        ):
            return generation
        return -1

    def _admit(self) -> tuple[int, str]:
        # Admission under the lock: (generation, state) of an admitted call.
        generation = self._generation  # lock-free when closed: see admit_closed
        if self._known == STATE_CLOSED and self._plain_storage and self._state_storage._state == STATE_CLOSED:  # type: ignore[attr-defined]
            return generation, STATE_CLOSED
        shared = self.shared
        if shared is not None and shared.due():
            shared.sync()  # I/O, bounded by the link: outside the lock
        lock: _GreenRLock = self._lock  # type: ignore[assignment]
        with lock:
            state = self._sync()
            if state == STATE_CLOSED:
                return self._generation, state
            if state == STATE_HALF_OPEN and self._trials_admitted < self.config.half_open_calls:
                self._trials_admitted += 1
                return self._generation, state
            retry_after = max(0.0, self._open_deadline() - self._clock.now()) if state == STATE_OPEN else 0.0
            self._bus.emit("breaker.rejected", breaker=self.name, state=state, retry_after=retry_after)
            what = "open" if state == STATE_OPEN else "half-open and all trial calls are taken"
        raise CircuitBreakerOpen(
            f"circuit breaker {self.name!r} is {what}", breaker=self.name or "", state=state, retry_after=retry_after
        )

    def admit(self) -> Ticket:
        """Admit one call or raise :class:`CircuitBreakerOpen`. Pair it with :meth:`record`."""
        generation, state = self._admit()
        return Ticket(generation=generation, state=state, started=self._clock.now())

    def record(self, ticket: Ticket, exc: Optional[BaseException] = None) -> str:
        """Record how an admitted call ended; return the outcome ('discarded' if stale)."""
        return self.record_outcome(ticket.generation, ticket.state, ticket.started, exc)

    def record_outcome(
        self, generation: int, state: str, started: Optional[float], exc: Optional[BaseException]
    ) -> str:
        """Record the outcome of a call admitted in ``generation`` while ``state``; returns the outcome's name.

        :meth:`record` with a :class:`Ticket` is the usual way; the composed
        runner (resilience/composed.py) calls this with the pieces it keeps.
        ``started`` is None when nobody needs the duration (no
        slow_call_duration, no breaker.call subscriber). Recording is under the lock.

        Example::

            >>> from nexus_green.clock import FakeClock
            >>> cb = CircuitBreaker(name="doc", clock=FakeClock())
            >>> t = cb.admit()
            >>> cb.record_outcome(t.generation, t.state, t.started, ConnectionError("down"))
            'failure'
        """
        cfg = self.config
        if (
            exc is None
            and started is None
            and state == STATE_CLOSED
            and self._plain_storage
            and not self._listeners
            and self.record_closed_success(generation)
        ):
            return SUCCESS
        with self._lock:
            duration = 0.0 if started is None else self._clock.now() - started
            if exc is None:
                outcome = SUCCESS
                slow = cfg.slow_call_duration is not None and duration >= cfg.slow_call_duration
            else:
                outcome = self.classify(exc)
                slow = outcome != IGNORED and (
                    isinstance(exc, cfg.slow_exceptions)
                    or (cfg.slow_call_duration is not None and duration >= cfg.slow_call_duration)
                )
            if generation != self._generation:
                outcome = DISCARDED
            elif outcome == IGNORED:
                if state == STATE_HALF_OPEN:
                    self._trials_admitted -= 1
            else:
                self._apply(state, outcome, slow, exc)
            if self._bus.wants("breaker.call"):
                calls, failures, slow_calls = self._window.totals()
                self._bus.emit(
                    "breaker.call",
                    breaker=self.name,
                    state=state,
                    outcome=outcome,
                    duration=duration,
                    slow=slow,
                    calls=calls,
                    failures=failures,
                    slow_calls=slow_calls,
                    failure_rate=failures / calls if calls else 0.0,
                    slow_rate=slow_calls / calls if calls else 0.0,
                )
            return outcome

    def record_closed_success(self, generation: int) -> bool:
        """Record a success admitted closed in ``generation`` (see :meth:`admit_closed`); False: use :meth:`record_outcome`.

        This is :meth:`record_outcome`'s path for a closed success with no duration
        needed, in one step. It keeps the lock, unlike admission: it changes
        the window, and another thread could interleave with that.
        """
        lock: _GreenRLock = self._lock  # type: ignore[assignment]
        me = getcurrent()
        if lock._owner is me:
            return False  # reentrant (a listener calling back in): the general path
        lock._sem.acquire()
        lock._owner = me
        lock._count = 1
        try:
            if generation != self._generation:
                return False  # stale: the general path discards it and emits what it must
            self._state_storage._fail_counter = 0  # type: ignore[attr-defined]
            if self._window.add(0) == self.config.minimum_calls:
                reason = self._trip_reason()
                if reason is not None:
                    self._enter(TRANSITIONS[(STATE_CLOSED, "trip")], reason)
            return True
        finally:
            lock._count = 0
            lock._owner = None
            lock._sem.release()

    def _apply(self, state: str, outcome: str, slow: bool, exc: Optional[BaseException]) -> None:
        storage = self._state_storage
        failed = outcome == FAILURE
        if failed:
            storage.increment_counter()
            for listener in self._listeners:
                self._safe(listener.failure, self, exc)
        else:
            storage.reset_counter()
            for listener in self._listeners:
                self._safe(listener.success, self)
        if state == STATE_CLOSED:
            window = self._window
            window.add_all((1, 1 if failed else 0, 1 if slow else 0))
            if self.shared is not None:
                self.shared.add(failed, slow)
            # A rate can only cross its threshold on a failure, a slow call, or
            # when the window just reached minimum_calls (calls grow one by one).
            if failed or slow or window.total(0) == self.config.minimum_calls:
                reason = self._trip_reason()
                if reason is not None:
                    self._enter(TRANSITIONS[(STATE_CLOSED, "trip")], reason)
        elif not failed:
            storage.increment_success_counter()
            if storage.success_counter >= self.config.half_open_successes:
                self._transition("trial_passed")
        else:
            self._trial_failures += 1
            if self._trial_failures >= self.config.half_open_failures:
                self._transition("trial_failed")

    def figures(self) -> WindowFigures:
        """Calls, failures and slow calls in the sliding window (closed state; the fleet's when shared)."""
        calls, failures, slow = self._window_totals()
        return WindowFigures(calls=calls, failures=failures, slow=slow)

    # --- pybreaker interface ----------------------------------------------------------
    @property  # type: ignore[override]
    def state(self) -> CircuitBreakerState:
        """The pybreaker state object (``.name`` is 'closed', 'open' or 'half-open')."""
        with self._lock:
            self._sync()
            return self._state

    @state.setter
    def state(self, state_str: str) -> None:
        with self._lock:
            self._enter(state_str, "set")

    @property
    def current_state(self) -> str:
        """'closed', 'open' or 'half-open', after applying an elapsed open duration."""
        if not self._ready:  # pybreaker's __init__ asks before ours has run
            return self._state_storage.state
        shared = self.shared
        if shared is not None and shared.due():
            shared.sync()
        with self._lock:
            return self._sync()

    @property
    def generation(self) -> int:
        """Counts state changes; results of calls admitted in an older generation are discarded."""
        return self._generation

    def call(self, func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Call ``func(*args, **kwargs)`` if the breaker admits it, and record the result."""
        generation, state = self._admit()
        started = (
            self._clock.now() if self.config.slow_call_duration is not None or self._bus.wants("breaker.call") else None
        )
        for listener in self._listeners:
            self._safe(listener.before_call, self, func, *args, **kwargs)
        try:
            result = func(*args, **kwargs)
        except BaseException as exc:
            self._record_raised(generation, state, started, exc)
            raise
        self.record_outcome(generation, state, started, None)
        return result

    def record_failure(self, generation: int, exc: BaseException) -> None:
        """Record that a call admitted by :meth:`admit_closed` raised ``exc``; the caller re-raises it.

        Raises :class:`CircuitBreakerOpen` instead when this failure tripped
        the breaker and ``throw_new_error_on_trip`` is set, as :meth:`call` does.
        """
        self._record_raised(generation, STATE_CLOSED, None, exc)

    def _record_raised(self, generation: int, state: str, started: Optional[float], exc: BaseException) -> None:
        if (
            self.record_outcome(generation, state, started, exc) == FAILURE
            and self.config.throw_new_error_on_trip
            and self._opened_by(generation)
        ):
            raise CircuitBreakerOpen(
                f"circuit breaker {self.name!r} opened by this failure", breaker=self.name or ""
            ) from exc

    def _opened_by(self, generation: int) -> bool:
        return self._generation == generation + 1 and self._known == STATE_OPEN

    @contextlib.contextmanager
    def calling(self) -> Iterator[None]:
        """``with breaker.calling(): ...`` runs the block as one protected call."""
        ticket = self.admit()
        try:
            yield
        except BaseException as exc:
            self.record(ticket, exc)
            raise
        self.record(ticket, None)

    def call_async(self, func: Any, *args: Any, **kwargs: Any) -> Any:
        """Tornado coroutines are not supported by the gevent breaker."""
        raise NotImplementedError("CircuitBreaker.call_async (tornado) is not supported in nexus_green")

    def open(self) -> bool:
        """Force the breaker open (pybreaker API); returns ``throw_new_error_on_trip``."""
        with self._lock:
            self._enter(STATE_OPEN, "forced")
        return self.config.throw_new_error_on_trip

    def half_open(self) -> None:
        """Force the breaker half-open (pybreaker API)."""
        with self._lock:
            self._enter(STATE_HALF_OPEN, "forced")

    def close(self) -> None:
        """Force the breaker closed (pybreaker API)."""
        with self._lock:
            self._enter(STATE_CLOSED, "forced")

    def __repr__(self) -> str:
        fig = self.figures()
        return (
            f"<CircuitBreaker {self.name!r} state={self._known} generation={self._generation} "
            f"calls={fig.calls} failures={fig.failures} slow={fig.slow}>"
        )


@overload
def circuit_breaker(breaker: F, /) -> F: ...


@overload
def circuit_breaker(breaker: Optional[CircuitBreaker] = None, /, **options: Any) -> Callable[[F], F]: ...


def circuit_breaker(breaker: Any = None, /, **options: Any) -> Any:
    """Decorator: protect a callable with a breaker (a shared one, or a new one from options).

    ``@circuit_breaker`` alone makes a breaker named after the function;
    ``@circuit_breaker(shared)`` reuses ``shared``; ``@circuit_breaker(name=..., clock=...)``
    makes one from :class:`CircuitBreaker` options. The breaker is ``wrapper.breaker``.

    Example::

        >>> from nexus_green.clock import FakeClock
        >>> @circuit_breaker(clock=FakeClock(), max_consecutive_failures=0)
        ... def fetch():
        ...     raise ConnectionError("down")
        >>> try: fetch()
        ... except ConnectionError: pass
        >>> fetch.breaker.current_state, fetch.breaker.name
        ('open', 'fetch')
    """
    if breaker is not None and not isinstance(breaker, CircuitBreaker):
        if is_bare(breaker, options):
            return circuit_breaker()(breaker)
        raise TypeError(
            f"circuit_breaker() takes a CircuitBreaker or keyword options, not {breaker!r}: "
            "write @circuit_breaker(max_consecutive_failures=5) or @circuit_breaker(shared_breaker)"
        )
    if breaker is None:
        _pybreaker_names(options)
        check_options("circuit breaker", options, (*config_fields(BreakerConfig), *_BREAKER_EXTRA))
    elif options:
        raise TypeError(
            f"circuit_breaker(shared) takes no options (got {', '.join(sorted(options))}): set them on the breaker"
        )

    def decorate(func: F) -> F:
        cb = breaker
        if cb is None:
            opts = dict(options)
            opts.setdefault("name", getattr(func, "__qualname__", "breaker"))
            cb = CircuitBreaker(**opts)

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            return cb.call(func, *args, **kwargs)

        wrapper.breaker = cb  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    return decorate
