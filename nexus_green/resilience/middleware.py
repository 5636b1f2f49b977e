"""Resilience middlewares (layer L4): the policies around ``call_next`` in the Client pipeline.

A middleware is an object with a ``name`` and
``__call__(request, call_next) -> Response``. :class:`ResilienceMiddleware`
applies a whole :class:`~nexus_green.resilience.config.ResilienceConfiguration`
in the recommended order; the others apply one policy each. They all use
``request.idempotent`` for retry and hedging eligibility, ``request.timeout``
as the request timeout when set, and put the logical request's idempotency
key in the ``idempotency-key`` header of every attempt (a key the caller
already set in that header is kept and reused).

Example::

    >>> from nexus_green.protocol.messages import Request, Response
    >>> from nexus_green.clock import FakeClock
    >>> seen = []
    >>> def call_next(req):
    ...     seen.append(req.headers["idempotency-key"])
    ...     if len(seen) == 1:
    ...         raise ConnectionResetError("reset")
    ...     return Response(body=b"ok")
    >>> mw = ResilienceMiddleware(clock=FakeClock())
    >>> mw(Request(body=b"q", idempotent=True), call_next).body
    b'ok'
    >>> len(seen), seen[0] == seen[1]
    (2, True)
"""

from __future__ import annotations

import random
from collections.abc import Callable, Hashable
from typing import Any, Optional

from ..clock import SYSTEM_CLOCK, Clock
from ..errors import ConfigurationError
from ..events import EventBus, default_bus
from ..pipeline import (
    ORDER_BULKHEAD,
    ORDER_CIRCUIT_BREAKER,
    ORDER_FAILOVER,
    ORDER_FALLBACK,
    ORDER_HEDGE,
    ORDER_IDEMPOTENCY,
    ORDER_RESILIENCE,
    ORDER_RETRY,
    ORDER_TIMEOUT,
    Handler,
)
from ..protocol.messages import Request, Response
from .breaker import CircuitBreaker
from .bulkheads import Bulkhead
from .config import ResilienceConfiguration, Resilient
from .failovers import Failover
from .fallbacks import Fallback
from .hedging import Hedge
from .idempotency import HEADER, current_idempotency_key, idempotency_key
from .retrying import Retry
from .timeouts import TimeoutPolicy

__all__ = [
    "CallNext",
    "ResilienceMiddleware",
    "CircuitBreakerMiddleware",
    "RetryMiddleware",
    "TimeoutMiddleware",
    "BulkheadMiddleware",
    "FallbackMiddleware",
    "FailoverMiddleware",
    "HedgeMiddleware",
    "IdempotencyMiddleware",
    "request_key",
]

CallNext = Handler


def request_key(request: Request) -> Hashable:
    """The default fallback cache key of a request: (endpoint, fid, body).

    Example::

        >>> request_key(Request(body=b"x", fid=3, endpoint="a:1"))
        ('a:1', 3, b'x')
    """
    return (request.endpoint, request.fid, request.body)


def _with_key(request: Request) -> Request:
    key = current_idempotency_key()
    if key is None or request.headers.get(HEADER) == key:
        return request
    return request.with_headers({HEADER: key})


def _as_response(request: Request, level: str, value: Any) -> Response:
    if isinstance(value, Response):
        return value.replace(cached=f"fallback:{level}")
    if isinstance(value, (bytes, bytearray)):
        return Response(body=bytes(value), fid=request.fid, cached=f"fallback:{level}")
    raise ConfigurationError(f"a fallback for a Request must give a Response or bytes, got {type(value).__name__}")


def _backup(request: Request, backup: Any, call_next: CallNext) -> Optional[Callable[[], Response]]:
    if backup is None:
        return None
    if isinstance(backup, str):
        return lambda: call_next(_with_key(request.replace(endpoint=backup)))
    return lambda: backup(request)


class _Keyed:
    """Runs the middleware's work as one logical request with one idempotency key."""

    def _logical(self, request: Request, work: Callable[[], Response]) -> Response:
        with idempotency_key(request.headers.get(HEADER)):
            return work()


class ResilienceMiddleware(_Keyed):
    """Every configured policy around ``call_next``, in the order of :class:`Resilient`.

    A backup given as an endpoint name re-sends the request to that endpoint.
    """

    order = ORDER_RESILIENCE

    def __init__(
        self,
        config: Optional[ResilienceConfiguration] = None,
        *,
        resilient: Optional[Resilient] = None,
        name: str = "resilience",
        clock: Clock = SYSTEM_CLOCK,
        rng: Optional[random.Random] = None,
        bus: EventBus = default_bus,
        **overrides: Any,
    ) -> None:
        self.name = name
        self.resilient = (
            resilient if resilient is not None else Resilient(config, clock=clock, rng=rng, bus=bus, **overrides)
        )
        # The bus its policies emit on (None: a given Resilient's, not known here); see pipeline.bus_of.
        self.bus: Optional[EventBus] = bus if resilient is None else None

    def __call__(self, request: Request, call_next: CallNext) -> Response:
        r = self.resilient
        fb = r.config.fallback

        def call(endpoint: Optional[str]) -> Response:
            req = request if endpoint is None else request.replace(endpoint=endpoint)
            return call_next(_with_key(req))

        def work() -> Response:
            return r.run(
                call,
                idempotent=request.idempotent,
                key=(fb.key or request_key)(request) if fb is not None else None,
                backup=_backup(request, fb.backup, call_next) if fb is not None else None,
                adapt=lambda level, value: _as_response(request, level, value),
                timeout=request.timeout,
            )

        if not r.config.idempotency_keys:
            return work()
        return self._logical(request, work)


class CircuitBreakerMiddleware:
    """A circuit breaker around ``call_next``."""

    order = ORDER_CIRCUIT_BREAKER

    def __init__(self, breaker: CircuitBreaker, *, name: str = "circuit_breaker") -> None:
        self.name = name
        self.breaker = breaker

    def __call__(self, request: Request, call_next: CallNext) -> Response:
        return self.breaker.call(call_next, request)


class RetryMiddleware(_Keyed):
    """Retries idempotent requests; every attempt carries the same idempotency key."""

    order = ORDER_RETRY

    def __init__(self, retry: Retry, *, name: str = "retry") -> None:
        self.name = name
        self.retry = retry

    def __call__(self, request: Request, call_next: CallNext) -> Response:
        return self._logical(
            request, lambda: self.retry.run(lambda: call_next(_with_key(request)), idempotent=request.idempotent)
        )


class TimeoutMiddleware:
    """Enforces ``request.timeout`` (or the policy's limit) and the overall deadline."""

    order = ORDER_TIMEOUT

    def __init__(self, policy: TimeoutPolicy, *, name: str = "timeout") -> None:
        self.name = name
        self.policy = policy

    def __call__(self, request: Request, call_next: CallNext) -> Response:
        return self.policy.run(lambda: call_next(request), seconds=request.timeout)


class BulkheadMiddleware:
    """Runs the request inside a bulkhead."""

    order = ORDER_BULKHEAD

    def __init__(self, bulkhead: Bulkhead, *, name: str = "bulkhead") -> None:
        self.name = name
        self.bulkhead = bulkhead

    def __call__(self, request: Request, call_next: CallNext) -> Response:
        return self.bulkhead.run(lambda: call_next(request))


class FallbackMiddleware:
    """Serves a cached response, a default, or a backup (callable or endpoint) when the request fails.

    The cache key is ``config.key(request)`` (default :func:`request_key`).
    """

    order = ORDER_FALLBACK

    def __init__(self, fallback: Fallback, *, name: str = "fallback") -> None:
        self.name = name
        self.fallback = fallback

    def __call__(self, request: Request, call_next: CallNext) -> Response:
        cfg = self.fallback.config
        return self.fallback.run(
            lambda: call_next(request),
            key=(cfg.key or request_key)(request),
            backup=_backup(request, cfg.backup, call_next),
            adapt=lambda level, value: _as_response(request, level, value),
        )


class FailoverMiddleware(_Keyed):
    """Sends the request to each healthy endpoint in turn (``request.endpoint`` is replaced)."""

    order = ORDER_FAILOVER

    def __init__(self, failover: Failover, *, name: str = "failover") -> None:
        self.name = name
        self.failover = failover

    def __call__(self, request: Request, call_next: CallNext) -> Response:
        return self._logical(
            request,
            lambda: self.failover.run(
                lambda ep: call_next(_with_key(request.replace(endpoint=ep))), idempotent=request.idempotent
            ),
        )


class HedgeMiddleware(_Keyed):
    """Hedges idempotent requests; the hedge carries the same idempotency key."""

    order = ORDER_HEDGE

    def __init__(self, hedge: Hedge, *, name: str = "hedge") -> None:
        self.name = name
        self.hedge = hedge

    def __call__(self, request: Request, call_next: CallNext) -> Response:
        return self._logical(
            request, lambda: self.hedge.run(lambda: call_next(_with_key(request)), idempotent=request.idempotent)
        )


class IdempotencyMiddleware(_Keyed):
    """Gives every request an idempotency key (kept through all attempts below it)."""

    order = ORDER_IDEMPOTENCY

    def __init__(self, *, name: str = "idempotency") -> None:
        self.name = name

    def __call__(self, request: Request, call_next: CallNext) -> Response:
        return self._logical(request, lambda: call_next(_with_key(request)))
