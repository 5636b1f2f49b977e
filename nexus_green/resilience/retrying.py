"""Retry (layer L4): idempotent-only retries with full-jitter backoff and a budget.

:class:`RetryPolicy` is pure: given the attempt number, the error, whether the
operation is idempotent and the time left, it returns a
:class:`RetryDecision`. :class:`Retry` carries decisions out around any
callable, and :func:`retry` is its decorator.

* Only idempotent operations are retried (declared per decorator, or per call
  with a predicate on the call's arguments, or by ``Request.idempotent`` in
  the middleware). A non-idempotent call is retried only when the error proves
  the request never left (ConnectError, ConnectTimeout, ConnectionRefusedError).
* Errors: :class:`~nexus_green.errors.ProtocolError`,
  :class:`~nexus_green.errors.PolicyRejection` and
  :class:`~nexus_green.errors.UsageError` never; a
  :class:`~nexus_green.errors.RemoteError` when its code is in
  ``retryable_codes``; any other NexusError by its ``retryable`` flag (refused,
  reset, timeouts). A foreign exception is classified by its chain
  (:func:`error_chain`: itself, then ``reason``, ``__cause__`` and
  ``__context__``, nearest first), so ``requests``, urllib3, http.client,
  redis-py and any library that chains its errors are understood: the first
  link that is a NexusError, a known transport error (:func:`transport_kind`)
  or matches ``retry_on`` (exception classes or a predicate) decides.
* Sent or not sent (DESIGN principle 12): :func:`was_not_sent` is True only
  when the nearest known transport error in the chain is a connect-phase
  error (refused, DNS failure, a connect timeout, urllib3's
  NewConnectionError and the like). Any other transport error may have been
  sent: only idempotent calls are retried after it.
* Backoff: full jitter, ``uniform(0, min(max_delay, base_delay * multiplier ** (n-1)))``.
* A per-attempt timeout, and never a sleep past the overall deadline.
* One :class:`RetryScope` per logical request (a contextvar): nested
  decorated layers share its attempt allowance and the outermost layer's
  :class:`~nexus_green.resilience.budget.RetryBudget`, so 3 layers of 3
  attempts make 3 calls, not 27.

Events: ``retry.attempt`` [attempt, delay, error, reason] before each retry;
``retry.gave_up`` [attempts, reason, error] when a wanted retry was refused.

Example::

    >>> from nexus_green.clock import FakeClock
    >>> calls = []
    >>> @retry(idempotent=True, clock=FakeClock())
    ... def flaky():
    ...     calls.append(1)
    ...     if len(calls) < 3:
    ...         raise ConnectionResetError("reset")
    ...     return "ok"
    >>> flaky(), len(calls)
    ('ok', 3)
"""

from __future__ import annotations

import contextvars
import functools
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Optional, TypeVar, Union, overload

from ..clock import SYSTEM_CLOCK, Clock
from ..deadlines import remaining
from ..decorating import is_bare
from ..errors import (
    ConfigurationError,
    ConnectError,
    ConnectTimeout,
    NexusError,
    NexusTimeout,
    PolicyRejection,
    ProtocolError,
    RemoteError,
    RetryBudgetExhausted,
    UsageError,
)
from ..events import EventBus, default_bus
from .budget import RetryBudget, options_into
from .timeouts import run_with_timeout

__all__ = [
    "RetryConfig",
    "RetryDecision",
    "RetryPolicy",
    "RetryScope",
    "Retry",
    "current_retry_scope",
    "retry_scope",
    "is_retryable",
    "was_not_sent",
    "error_chain",
    "transport_kind",
    "NOT_SENT",
    "MAYBE_SENT",
    "retry",
]

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_RETRYABLE_CODES: frozenset[int] = frozenset({502, 503, 504})
DEFAULT_RETRY_ON: tuple[type, ...] = (ConnectionError, TimeoutError)
DEFAULT_NEVER_RETRY: tuple[type, ...] = (ProtocolError, PolicyRejection, UsageError)

#: What ``retry_on`` and ``never_retry`` accept: a class, a predicate, or a tuple of either.
ErrorMatcher = Union[type, Callable[[BaseException], bool], tuple[Any, ...]]

NOT_SENT, MAYBE_SENT = "not_sent", "maybe_sent"

#: Foreign transport errors by "<top-level package>.<class name>" (found on the MRO, nearest class
#: first): the connect-phase ones prove nothing was sent; the others may have been sent.
#: Names, not imports: the libraries are optional and resilience/ never imports socket.
TRANSPORT_ERRORS: dict[str, str] = {
    # the stdlib (socket.timeout is TimeoutError: ETIMEDOUT also ends established links)
    "builtins.ConnectionRefusedError": NOT_SENT,
    "socket.gaierror": NOT_SENT,
    "socket.herror": NOT_SENT,
    "builtins.ConnectionResetError": MAYBE_SENT,
    "builtins.ConnectionAbortedError": MAYBE_SENT,
    "builtins.BrokenPipeError": MAYBE_SENT,
    "builtins.TimeoutError": MAYBE_SENT,
    "http.IncompleteRead": MAYBE_SENT,
    "http.BadStatusLine": MAYBE_SENT,
    # urllib3 (requests wraps these in its own ConnectionError, which decides nothing by itself)
    "urllib3.NewConnectionError": NOT_SENT,
    "urllib3.NameResolutionError": NOT_SENT,
    "urllib3.ConnectTimeoutError": NOT_SENT,
    "urllib3.ProtocolError": MAYBE_SENT,
    "urllib3.ReadTimeoutError": MAYBE_SENT,
    "urllib3.IncompleteRead": MAYBE_SENT,
    # requests
    "requests.ConnectTimeout": NOT_SENT,
    "requests.ReadTimeout": MAYBE_SENT,
    "requests.ChunkedEncodingError": MAYBE_SENT,
    # httpx / httpcore
    "httpx.ConnectError": NOT_SENT,
    "httpx.ConnectTimeout": NOT_SENT,
    "httpx.ReadError": MAYBE_SENT,
    "httpx.WriteError": MAYBE_SENT,
    "httpx.ReadTimeout": MAYBE_SENT,
    "httpx.WriteTimeout": MAYBE_SENT,
    "httpx.RemoteProtocolError": MAYBE_SENT,
    "httpcore.ConnectError": NOT_SENT,
    "httpcore.ConnectTimeout": NOT_SENT,
    # geventhttpclient, aiohttp
    "aiohttp.ClientConnectorError": NOT_SENT,
}

_CHAIN_LIMIT = 32

_SCOPE: contextvars.ContextVar[Optional[RetryScope]] = contextvars.ContextVar("nexus_green_retry_scope", default=None)


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryConfig:
    """Retry settings.

    Example::

        >>> c = RetryConfig()
        >>> c.max_attempts, c.base_delay, c.max_delay, sorted(c.retryable_codes)
        (3, 0.1, 10.0, [502, 503, 504])
    """

    max_attempts: int = 3
    base_delay: float = 0.1
    max_delay: float = 10.0
    multiplier: float = 2.0
    attempt_timeout: Optional[float] = None
    idempotent: bool = False
    retryable_codes: frozenset[int] = DEFAULT_RETRYABLE_CODES
    retry_on: ErrorMatcher = DEFAULT_RETRY_ON
    never_retry: ErrorMatcher = DEFAULT_NEVER_RETRY

    def __post_init__(self) -> None:
        _check_matcher("retry_on", self.retry_on)
        _check_matcher("never_retry", self.never_retry)
        if self.max_attempts < 1:
            raise ConfigurationError(f"max_attempts must be >= 1, got {self.max_attempts}")
        if self.base_delay < 0 or self.max_delay < self.base_delay:
            raise ConfigurationError(
                f"delays must satisfy 0 <= base_delay ({self.base_delay}) <= max_delay ({self.max_delay})"
            )
        if self.multiplier < 1:
            raise ConfigurationError(f"multiplier must be >= 1, got {self.multiplier}")
        if self.attempt_timeout is not None and not self.attempt_timeout > 0:
            raise ConfigurationError(f"attempt_timeout must be > 0 s, got {self.attempt_timeout}")


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryDecision:
    """Whether to retry, after how long, and why (the reason is logged in events)."""

    retry: bool
    delay: float = 0.0
    reason: str = ""


def error_chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc``, then the errors it wraps, nearest first: ``reason``, ``__cause__``, ``__context__``.

    ``reason`` is where urllib3's MaxRetryError and urllib's URLError keep
    the error they wrap; ``__context__`` is skipped when the raiser said
    ``raise ... from`` (``__suppress_context__``). Each error once, at most 32.

    Example::

        >>> try:
        ...     try:
        ...         raise ConnectionRefusedError(111, "refused")
        ...     except OSError as e:
        ...         raise RuntimeError("wrapped") from e
        ... except RuntimeError as outer:
        ...     [type(x).__name__ for x in error_chain(outer)]
        ['RuntimeError', 'ConnectionRefusedError']
    """
    seen: set[int] = set()
    queue = [exc]
    while queue and len(seen) < _CHAIN_LIMIT:
        link = queue.pop(0)
        if id(link) in seen:
            continue
        seen.add(id(link))
        yield link
        reason = getattr(link, "reason", None)
        for nxt in (
            reason if isinstance(reason, BaseException) else None,
            link.__cause__,
            None if link.__suppress_context__ else link.__context__,
        ):
            if nxt is not None:
                queue.append(nxt)


def _nexus_kind(exc: NexusError) -> str:
    if isinstance(exc, NexusTimeout):
        return NOT_SENT if isinstance(exc, ConnectTimeout) or exc.phase in NOT_SENT_PHASES else MAYBE_SENT
    return NOT_SENT if isinstance(exc, ConnectError) else MAYBE_SENT


def transport_kind(exc: BaseException) -> Optional[str]:
    """NOT_SENT or MAYBE_SENT when ``exc`` itself is a known transport (or nexus_green) error, else None.

    Example::

        >>> from nexus_green.errors import ConnectionRefused, RemoteError
        >>> transport_kind(ConnectionRefusedError()), transport_kind(ConnectionResetError())
        ('not_sent', 'maybe_sent')
        >>> transport_kind(ConnectionRefused()), transport_kind(RemoteError(code=503)), transport_kind(OSError())
        ('not_sent', 'maybe_sent', None)
    """
    if isinstance(exc, NexusError):
        return _nexus_kind(exc)
    for cls in type(exc).__mro__:
        kind = TRANSPORT_ERRORS.get(f"{cls.__module__.partition('.')[0]}.{cls.__name__}")
        if kind is not None:
            return kind
    return None


def matches(exc: BaseException, matcher: ErrorMatcher) -> bool:
    """Whether ``exc`` matches a class, a predicate, or a tuple of either.

    Example::

        >>> matches(KeyError(), (ValueError, lambda e: isinstance(e, LookupError))), matches(KeyError(), ValueError)
        (True, False)
    """
    if isinstance(matcher, type):
        return isinstance(exc, matcher)
    if isinstance(matcher, tuple):
        return any(matches(exc, m) for m in matcher)
    return bool(matcher(exc))


def _check_matcher(name: str, matcher: Any) -> None:
    items = matcher if isinstance(matcher, tuple) else (matcher,)
    for m in items:
        if isinstance(m, type) and issubclass(m, BaseException) or callable(m) and not isinstance(m, type):
            continue
        raise ConfigurationError(f"{name} takes exception classes or a predicate (or a tuple of them), got {m!r}")


def is_retryable(
    exc: BaseException,
    *,
    retryable_codes: frozenset[int] = DEFAULT_RETRYABLE_CODES,
    retry_on: ErrorMatcher = DEFAULT_RETRY_ON,
    never_retry: ErrorMatcher = DEFAULT_NEVER_RETRY,
) -> bool:
    """Whether another attempt may succeed after ``exc``.

    The first link of :func:`error_chain` that says something decides: one
    matching ``never_retry`` (no), a RemoteError (by its code), another
    NexusError (by its ``retryable``), a known transport error or one matching
    ``retry_on`` (yes). A chain that says nothing: no.

    Example::

        >>> from nexus_green.errors import ConnectionRefused, RemoteProtocolError
        >>> is_retryable(ConnectionRefused()), is_retryable(RemoteProtocolError())
        (True, False)
        >>> is_retryable(RemoteError(code=503)), is_retryable(RemoteError(code=404))
        (True, False)
        >>> is_retryable(ValueError("bad")), is_retryable(ValueError("bad"), retry_on=lambda e: "bad" in str(e))
        (False, True)
    """
    for link in error_chain(exc):
        if matches(link, never_retry):
            return False
        if isinstance(link, RemoteError):
            return link.code in retryable_codes
        if isinstance(link, NexusError):
            return link.retryable
        if matches(link, retry_on) or transport_kind(link) is not None:
            return True
    return False


def was_not_sent(exc: BaseException) -> bool:
    """True when ``exc`` proves the request never reached the peer (safe to resend).

    The nearest link of :func:`error_chain` that is a known transport error
    decides (:func:`transport_kind`): a connect error (refused, DNS, a
    connect timeout, urllib3's NewConnectionError...), or a timeout whose
    ``phase`` says the request never reached the socket: it ran out while
    connecting, waiting for room in the pool, or still whole in the write
    queue (taken back). A timeout waiting for the answer, a link lost after
    the first byte, a reset: they may have been applied, and only idempotent
    requests are resent then (DESIGN principle 12). Nothing known in the
    chain: maybe sent.

    Example::

        >>> from nexus_green.errors import ConnectionRefused, ConnectionLost, RequestTimeout
        >>> was_not_sent(ConnectionRefused()), was_not_sent(ConnectionLost())
        (True, False)
        >>> was_not_sent(RequestTimeout(phase="write")), was_not_sent(RequestTimeout(phase="response"))
        (True, False)
    """
    for link in error_chain(exc):
        kind = transport_kind(link)
        if kind is not None:
            return kind == NOT_SENT
    return False


#: Phases of a timeout in which the request never reached the socket.
NOT_SENT_PHASES = frozenset({"dns", "tcp", "socks5", "tls", "connect", "checkout", "write"})


class RetryPolicy:
    """Pure retry decisions (attempt, error, idempotency, time left -> decision).

    Example::

        >>> p = RetryPolicy(RetryConfig(base_delay=1.0), rng=random.Random(7))
        >>> d = p.decide(attempt=1, exc=TimeoutError(), idempotent=True, remaining=None)
        >>> d.retry, 0 <= d.delay <= 1.0
        (True, True)
        >>> p.decide(attempt=1, exc=TimeoutError(), idempotent=False, remaining=None).reason
        'not_idempotent'
        >>> p.decide(attempt=3, exc=TimeoutError(), idempotent=True, remaining=None).reason
        'max_attempts'
    """

    def __init__(
        self,
        config: Optional[RetryConfig] = None,
        *,
        rng: Optional[random.Random] = None,
    ) -> None:
        self.config = config or RetryConfig()
        self._rng = rng or random.Random()

    def backoff(self, attempt: int) -> float:
        """Full-jitter delay before attempt ``attempt + 1``."""
        c = self.config
        cap = min(c.max_delay, c.base_delay * c.multiplier ** min(attempt - 1, 64))
        return self._rng.random() * cap

    def decide(
        self,
        *,
        attempt: int,
        exc: BaseException,
        idempotent: bool,
        remaining: Optional[float],
    ) -> RetryDecision:
        """Decide what to do after attempt number ``attempt`` failed with ``exc``."""
        c = self.config
        if attempt >= c.max_attempts:
            return RetryDecision(retry=False, reason="max_attempts")
        if not is_retryable(
            exc,
            retryable_codes=c.retryable_codes,
            retry_on=c.retry_on,
            never_retry=c.never_retry,
        ):
            return RetryDecision(retry=False, reason="not_retryable")
        if not idempotent and not was_not_sent(exc):
            return RetryDecision(retry=False, reason="not_idempotent")
        delay = self.backoff(attempt)
        if remaining is not None and remaining <= delay:
            return RetryDecision(retry=False, reason="deadline")
        return RetryDecision(retry=True, delay=delay, reason="idempotent" if idempotent else "not_sent")


class RetryScope:
    """The retry allowance of one logical request, shared by every nested layer.

    ``retries_left`` comes from the outermost layer's ``max_attempts - 1``;
    ``budget`` is the outermost layer's budget. :meth:`take` spends one retry.

    Example::

        >>> s = RetryScope(budget=None, retries_left=1)
        >>> s.take(), s.take()
        ('', 'attempts')
    """

    __slots__ = ("budget", "retries_left", "retries")

    def __init__(self, budget: Optional[RetryBudget], retries_left: int) -> None:
        self.budget = budget
        self.retries_left = retries_left
        self.retries = 0

    def take(self) -> str:
        """Spend one retry: '' on success, 'attempts' or 'budget' naming what refused it."""
        if self.retries_left <= 0:
            return "attempts"
        if self.budget is not None and not self.budget.try_spend():
            return "budget"
        self.retries_left -= 1
        self.retries += 1
        return ""

    def __repr__(self) -> str:
        return f"<RetryScope retries={self.retries} left={self.retries_left}>"


def current_retry_scope() -> Optional[RetryScope]:
    """The retry scope of the logical request in progress, or None."""
    return _SCOPE.get()


class retry_scope:  # noqa: N801 - used like a function: ``with retry_scope(...) as scope:``
    """Enter the request's retry scope, creating it (and counting a request) if this is the outermost layer.

    Example::

        >>> with retry_scope(None, 2) as outer:
        ...     with retry_scope(None, 5) as inner:
        ...         inner is outer, inner.retries_left
        (True, 2)
    """

    __slots__ = ("_budget", "_retries", "_token")

    def __init__(self, budget: Optional[RetryBudget], retries: int) -> None:
        self._budget = budget
        self._retries = retries
        self._token: Optional[contextvars.Token[Optional[RetryScope]]] = None

    def __enter__(self) -> RetryScope:
        scope = _SCOPE.get()
        if scope is not None:
            return scope
        scope = RetryScope(budget=self._budget, retries_left=self._retries)
        if self._budget is not None:
            self._budget.record_request()
        self._token = _SCOPE.set(scope)
        return scope

    def __exit__(self, *exc_info: object) -> None:
        if self._token is not None:
            _SCOPE.reset(self._token)
            self._token = None


_RETRY_EXTRA = ("clock", "rng", "budget", "use_budget", "bus")


class Retry:
    """Runs a callable under a :class:`RetryPolicy`, a shared :class:`RetryScope` and a budget.

    Example::

        >>> from nexus_green.clock import FakeClock
        >>> r = Retry(max_attempts=2, clock=FakeClock())
        >>> r.run(lambda: 42, idempotent=True)
        42
    """

    def __init__(
        self,
        config: Optional[RetryConfig] = None,
        *,
        clock: Clock = SYSTEM_CLOCK,
        rng: Optional[random.Random] = None,
        budget: Optional[RetryBudget] = None,
        use_budget: bool = True,
        bus: EventBus = default_bus,
        **options: Any,
    ) -> None:
        self.config: RetryConfig = options_into(config or RetryConfig(), options, "retry", _RETRY_EXTRA)
        self.policy = RetryPolicy(self.config, rng=rng)
        self.budget: Optional[RetryBudget] = (budget or RetryBudget(clock=clock)) if use_budget else None
        self._clock = clock
        self._bus = bus

    def run(self, fn: Callable[..., T], *args: Any, idempotent: Optional[bool] = None) -> T:
        """Call ``fn(*args)`` until it succeeds or the policy, allowance or budget says stop."""
        return self.run_args(fn, idempotent, *args)

    def run_args(self, fn: Callable[..., T], idempotent: Optional[bool], *args: Any) -> T:
        """:meth:`run` with ``idempotent`` positional (no keyword dict per call on hot paths).

        Example::

            >>> from nexus_green.clock import FakeClock
            >>> Retry(clock=FakeClock()).run_args(divmod, True, 7, 2)
            (3, 1)
        """
        scope = _SCOPE.get()
        token = None
        if scope is None:
            # The outermost layer of this logical request: open its scope.
            budget = self.budget
            scope = RetryScope(budget=budget, retries_left=self.config.max_attempts - 1)
            if budget is not None:
                budget.record_request()
            token = _SCOPE.set(scope)
        try:
            if self.config.attempt_timeout is None:
                try:
                    return fn(*args)
                except Exception as exc:
                    return self.after_first_failure(exc, fn, idempotent, scope, *args)
            return self._attempts(1, fn, idempotent, scope, args)
        finally:
            if token is not None:
                _SCOPE.reset(token)

    def after_first_failure(
        self,
        exc: Exception,
        fn: Callable[..., T],
        idempotent: Optional[bool],
        scope: RetryScope,
        *args: Any,
    ) -> T:
        """Continue :meth:`run_args` after its first attempt, ``fn(*args)`` without an attempt timeout, raised ``exc``.

        For a caller that made the first attempt itself, inside ``scope`` (the
        request's retry scope, already entered): what follows is exactly what
        :meth:`run_args` does next: decide, sleep, attempt again...

        Example::

            >>> from nexus_green.clock import FakeClock
            >>> r = Retry(clock=FakeClock())
            >>> r.after_first_failure(TimeoutError(), divmod, True, RetryScope(budget=None, retries_left=2), 7, 2)
            (3, 1)
        """
        self._after_failure(1, exc, idempotent, scope)
        return self._attempts(2, fn, idempotent, scope, args)

    def _attempts(
        self,
        attempt: int,
        fn: Callable[..., T],
        idempotent: Optional[bool],
        scope: RetryScope,
        args: tuple[Any, ...],
    ) -> T:
        # Attempt number ``attempt`` and the following ones, each under the attempt timeout if any.
        attempt_timeout = self.config.attempt_timeout
        while True:
            try:
                if attempt_timeout is None:
                    return fn(*args)
                return run_with_timeout(fn, attempt_timeout, clock=self._clock, what="attempt", args=args)
            except Exception as exc:
                self._after_failure(attempt, exc, idempotent, scope)
                attempt += 1

    def _after_failure(
        self,
        attempt: int,
        exc: Exception,
        idempotent: Optional[bool],
        scope: RetryScope,
    ) -> None:
        # Decide about a failed attempt: return after the backoff sleep to try
        # again, or raise (the error itself, or RetryBudgetExhausted from it).
        idem = self.config.idempotent if idempotent is None else idempotent
        decision = self.policy.decide(
            attempt=attempt,
            exc=exc,
            idempotent=idem,
            remaining=remaining(clock=self._clock),
        )
        refused = scope.take() if decision.retry else decision.reason
        if refused:
            if decision.retry:
                self._bus.emit("retry.gave_up", attempts=attempt, reason=refused, error=exc)
            if refused == "budget":
                raise RetryBudgetExhausted(f"retry budget exhausted after {attempt} attempt(s): {exc!r}") from exc
            raise exc
        self._bus.emit(
            "retry.attempt",
            attempt=attempt + 1,
            delay=decision.delay,
            error=exc,
            reason=decision.reason,
        )
        self._clock.sleep(decision.delay)

    def __repr__(self) -> str:
        return f"<Retry max_attempts={self.config.max_attempts} budget={self.budget!r}>"


@overload
def retry(policy: F, /) -> F: ...


@overload
def retry(
    policy: Optional[Retry] = None, /, *, idempotent: Union[bool, Callable[..., bool], None] = None, **options: Any
) -> Callable[[F], F]: ...


def retry(
    policy: Any = None,
    /,
    *,
    idempotent: Union[bool, Callable[..., bool], None] = None,
    **options: Any,
) -> Any:
    """Decorator: retry the function under a :class:`Retry` (given, or built from ``options``).

    ``@retry`` alone uses the defaults (3 attempts; a call not declared
    idempotent is resent only when nothing was sent). ``idempotent`` may be
    a bool, or a predicate called with the call's arguments (declaring
    idempotency per call). The runner is ``wrapper.retry``.

    Example::

        >>> from nexus_green.clock import FakeClock
        >>> n = []
        >>> @retry(idempotent=lambda method: method == "GET", clock=FakeClock())
        ... def send(method):
        ...     n.append(method)
        ...     raise ConnectionResetError()
        >>> for m in ("GET", "POST"):
        ...     try: send(m)
        ...     except ConnectionResetError: pass
        >>> n
        ['GET', 'GET', 'GET', 'POST']
    """
    if policy is not None and not isinstance(policy, Retry):
        if is_bare(policy, options) and idempotent is None:
            return retry()(policy)
        raise TypeError(f"retry() takes a Retry or keyword options, not {policy!r}: write @retry(max_attempts=3)")
    runner = policy if policy is not None else Retry(**options)

    def decorate(func: F) -> F:
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            idem = idempotent(*args, **kwargs) if callable(idempotent) else idempotent
            if kwargs:
                return runner.run(lambda: func(*args, **kwargs), idempotent=idem)
            return runner.run(func, *args, idempotent=idem)

        wrapper.retry = runner  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    return decorate
