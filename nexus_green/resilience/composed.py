"""The composed runner (layer L4): the default policies as one function, built once.

``@resilient`` and :class:`~nexus_green.resilience.middleware.ResilienceMiddleware`
both run a call through the policies of a
:class:`~nexus_green.resilience.config.Resilient` in the order of
:mod:`.config`. When the configuration has no fallback, failover, hedging,
bulkhead or adaptive timeout (the defaults: key, overall deadline, breaker,
retry + budget, request timeout), :func:`compose` builds that order once, at
construction, into one :data:`Runner`::

    run(fn, seconds, idempotent, args, kwargs)

calls ``fn(*args, **kwargs)`` as one logical request: one idempotency key
(a sequence number until someone reads it), the overall deadline, the
breaker, the retries and, per attempt, the request timeout ``seconds`` (None:
only the deadline in force). Nothing is built per call: no closure, no
partial; the decorator passes the wrapped function and its arguments, the
middleware passes ``call_next`` and the request.

Example::

    >>> from nexus_green.clock import FakeClock
    >>> from nexus_green.events import EventBus
    >>> from nexus_green.resilience.breaker import CircuitBreaker
    >>> from nexus_green.resilience.retrying import Retry
    >>> clock, bus = FakeClock(), EventBus()
    >>> run = compose(
    ...     breaker=CircuitBreaker(clock=clock, bus=bus), retry=Retry(clock=clock, bus=bus),
    ...     timeout=None, keys=True, overall=60.0, clock=clock,
    ... )
    >>> tries = []
    >>> def lookup(item, *, shelf):
    ...     tries.append(item)
    ...     if len(tries) == 1:
    ...         raise ConnectionResetError("reset")
    ...     return f"{item} on {shelf}"
    >>> run(lookup, None, True, ("tea",), {"shelf": "A3"}), len(tries)
    ('tea on A3', 2)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Optional

from ..clock import SYSTEM_CLOCK, Clock
from ..deadlines import deadline_var
from .breaker import STATE_CLOSED, CircuitBreaker
from .idempotency import _KEY, _SEQ
from .retrying import _SCOPE, Retry, RetryScope
from .timeouts import TimeoutPolicy, timed_call

__all__ = ["Runner", "compose", "apply"]

#: ``run(fn, seconds, idempotent, args, kwargs)``: see the module docstring.
Runner = Callable[[Callable[..., Any], Optional[float], bool, tuple[Any, ...], dict[str, Any]], Any]

_monotonic = time.monotonic  # SYSTEM_CLOCK.now(), one frame less on the hot path
_DEADLINE = deadline_var()


def apply(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """``fn(*args, **kwargs)``: one attempt without a request timeout, in the form the retry runner calls.

    Example::

        >>> apply(divmod, (7, 2), {})
        (3, 1)
    """
    return fn(*args, **kwargs)


def compose(
    *,
    breaker: Optional[CircuitBreaker],
    retry: Optional[Retry],
    timeout: Optional[TimeoutPolicy],
    keys: bool,
    overall: Optional[float],
    clock: Clock = SYSTEM_CLOCK,
) -> Runner:
    """The :data:`Runner` of key, overall deadline, breaker, retry and request timeout (each may be off).

    ``timeout`` must be a fixed (not adaptive) policy: it gives the error and
    the name of a timed-out attempt, the caller gives its ``seconds``.

    Example::

        >>> from nexus_green.resilience.timeouts import TimeoutPolicy
        >>> run = compose(breaker=None, retry=None, timeout=TimeoutPolicy(5.0), keys=False, overall=None)
        >>> run(divmod, 1.0, False, (7, 2), {})   # one attempt of divmod(7, 2), within 1 s
        (3, 1)
    """
    if timeout is not None and timeout.adaptive is not None:
        raise ValueError("compose() takes a fixed request timeout; an adaptive one takes Resilient.run")
    now_fn = _monotonic if clock is SYSTEM_CLOCK else clock.now
    protect = breaker.call if breaker is not None else None
    run_retry = retry.run_args if retry is not None else None
    error, what = (timeout.error, timeout.what) if timeout is not None else (None, "")
    timed = timeout is not None
    # The defaults (a breaker, and a retry without an attempt timeout) run flat: step for step what
    # breaker.call -> retry.run_args -> the attempt do, minus their frames, with one clock reading
    # for the start of the call (overall deadline, budget window, request timer):
    #   admission    = breaker.admit_closed(), else breaker.call (below)
    #   retry scope  = Retry.run_args' outermost-layer branch
    #   attempt 1    = the attempt; attempts 2.. = Retry.after_first_failure
    #   recording    = breaker.record_closed_success, else breaker.record_outcome
    # tests/resilience/test_resilience_composed.py runs scenarios through both and Resilient.run.
    flat = breaker is not None and retry is not None and retry.config.attempt_timeout is None
    if flat:
        assert breaker is not None and retry is not None
        budget, retries = retry.budget, retry.config.max_attempts - 1
        admit_closed, record_success, record_failure = (
            breaker.admit_closed,
            breaker.record_closed_success,
            breaker.record_failure,
        )
        continue_retry, record = retry.after_first_failure, breaker.record_outcome

    def run(fn: Callable[..., Any], seconds: Optional[float], idem: bool, args: Any, kwargs: Any) -> Any:
        now = now_fn()
        ktoken = _KEY.set(next(_SEQ)) if keys and _KEY.get() is None else None
        dtoken = None
        if overall is not None:
            mine = now + overall
            outer = _DEADLINE.get()
            if outer is None or mine < outer:
                dtoken = _DEADLINE.set(mine)
        try:
            if flat:
                generation = admit_closed()
                if generation >= 0:
                    scope = _SCOPE.get()
                    stoken = None
                    try:
                        if scope is None:
                            scope = RetryScope(budget, retries)
                            if budget is not None:
                                budget.record_request(now)
                            stoken = _SCOPE.set(scope)
                        try:
                            if timed:  # this call's start is the attempt's: no second clock reading
                                result = timed_call(fn, seconds, clock, error, what, args, kwargs, now)  # type: ignore[arg-type]
                            else:
                                result = fn(*args, **kwargs)
                        except Exception as exc:
                            if timed:
                                result = continue_retry(
                                    exc, timed_call, idem, scope, fn, seconds, clock, error, what, args, kwargs
                                )
                            else:
                                result = continue_retry(exc, apply, idem, scope, fn, args, kwargs)
                    except BaseException as exc:
                        record_failure(generation, exc)
                        raise
                    finally:
                        if stoken is not None:
                            _SCOPE.reset(stoken)
                    if not record_success(generation):
                        record(generation, STATE_CLOSED, None, None)
                    return result
            # Through the policies' own entry points (a breaker not closed or observed, or another
            # mix): the attempt is timed_call or apply with its arguments, still no closure.
            attempt: Callable[..., Any]
            head: tuple[Any, ...]
            if timed:
                attempt, head = timed_call, (fn, seconds, clock, error, what, args, kwargs)
            else:
                attempt, head = apply, (fn, args, kwargs)
            if run_retry is not None:
                if protect is not None:
                    return protect(run_retry, attempt, idem, *head)
                return run_retry(attempt, idem, *head)
            if protect is not None:
                return protect(attempt, *head)
            return attempt(*head)
        finally:
            if dtoken is not None:
                _DEADLINE.reset(dtoken)
            if ktoken is not None:
                _KEY.reset(ktoken)

    return run
