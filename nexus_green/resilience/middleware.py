"""Resilience middlewares (layer L4): the policies around ``call_next`` in the Client pipeline.

A middleware is an object with a ``name`` and
``__call__(request, call_next) -> Response``. :class:`ResilienceMiddleware`
applies a whole :class:`~nexus_green.resilience.config.ResilienceConfiguration`
in the recommended order; the others apply one policy each. They all use
``request.idempotent`` for retry and hedging eligibility, ``request.timeout``
as the request timeout when set, and put the logical request's idempotency
key in the ``idempotency-key`` header of every attempt when a copy of the
request may reach the server twice: it is idempotent (and so may be resent
after it may have been sent), an outer layer started the logical request, or
the caller set the header (that key is kept and reused). A request that is
not idempotent is resent only when nothing of it was sent (DESIGN principle
12): its key could never match a copy the server saw, so it is not sent.

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
from .idempotency import _KEY, HEADER, current_idempotency_key, idempotency_key
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

_NO_KWARGS: dict[str, Any] = {}


def request_key(request: Request) -> Hashable:
    """The default fallback cache key of a request: (endpoint, fid, body).

    Example::

        >>> request_key(Request(body=b"x", fid=3, endpoint="a:1"))
        ('a:1', 3, b'x')
    """
    return (request.endpoint, request.fid, request.body)


# Request's fields but headers, as (get, set) pairs of their slots: a copy with other headers for a
# third of what dataclasses.replace costs (it runs the frozen __init__), on every keyed attempt.
_OTHER_FIELDS = tuple(
    (Request.__dict__[n].__get__, Request.__dict__[n].__set__) for n in Request.__dataclass_fields__ if n != "headers"
)
_SET_HEADERS = Request.__dict__["headers"].__set__
_new = object.__new__


def _with_key(request: Request) -> Request:
    # The request with the logical request's key in its header (itself when there is none, or it is there).
    key = current_idempotency_key()
    headers = request.headers
    if key is None or headers.get(HEADER) == key:
        return request
    keyed = _new(Request)
    for get, set_ in _OTHER_FIELDS:
        set_(keyed, get(request))
    _SET_HEADERS(keyed, {**headers, HEADER: key} if headers else {HEADER: key})
    return keyed


def _send(call_next: CallNext, request: Request) -> Response:
    # One attempt as it is.
    return call_next(request)


def _send_keyed(call_next: CallNext, request: Request) -> Response:
    # One attempt carrying the logical request's key (spelled out here, at the first attempt).
    return call_next(_with_key(request))


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
    """Runs the middleware's work as one logical request with one idempotency key, when a key can matter.

    A key matters when a copy of the request may reach the server twice
    (DESIGN principle 12): the caller set one, an outer layer started the
    logical request, or the request is idempotent (retries, failover and
    hedges may resend it after it may have been sent). A request that is not
    idempotent is resent only when nothing of it was sent: it goes without.
    """

    #: Every request gets a key (IdempotencyMiddleware), not only those this middleware may resend.
    every_request = False

    def _logical(self, request: Request, work: Callable[[], Response]) -> Response:
        key = request.headers.get(HEADER)
        if key is None and not (request.idempotent or self.every_request) and _KEY.get() is None:
            return work()
        with idempotency_key(key):
            return work()


class ResilienceMiddleware:
    """Every configured policy around ``call_next``, in the order of :class:`Resilient`.

    With the defaults (no fallback, failover, hedging, bulkhead or adaptive
    timeout) a call runs through the configuration's composed runner
    (:mod:`.composed`), the same one ``@resilient`` uses, built once: nothing
    is built per call. A backup given as an endpoint name re-sends the
    request to that endpoint.

    The ``idempotency-key`` header goes on the wire when a copy of the request
    may reach the server twice: the caller set it (kept), an outer layer
    started the logical request (its key), the request is idempotent and this
    configuration may resend it (retries, failover, hedging), or a backup
    endpoint is configured (it is sent whatever happened to the first copy).
    A request that is not idempotent is resent only when nothing of it was
    sent, so it goes without a key (docs/resilience.md, "Idempotency keys on
    the wire").
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
        r = self.resilient = (
            resilient if resilient is not None else Resilient(config, clock=clock, rng=rng, bus=bus, **overrides)
        )
        # The bus its policies emit on (None: a given Resilient's, not known here); see pipeline.bus_of.
        self.bus: Optional[EventBus] = bus if resilient is None else None
        cfg = r.config
        fb = cfg.fallback
        self._run = r.runner
        self._seconds = r.request_seconds
        self._keys = cfg.idempotency_keys
        resends = (
            r.failover is not None or r.hedge is not None or (r.retry is not None and r.retry.config.max_attempts > 1)
        )
        # Which requests get a key of their own: every one (a backup endpoint resends any request),
        # the idempotent ones (this configuration may resend them after they may have been sent).
        self._key_any = self._keys and fb is not None and isinstance(fb.backup, str)
        self._key_idempotent = self._keys and resends

    def __call__(self, request: Request, call_next: CallNext) -> Response:
        send: Callable[[CallNext, Request], Response] = _send
        token = None
        if self._keys:
            headers = request.headers
            if headers and HEADER in headers:
                # The caller's key is the logical request's key (inner layers see it too).
                token = _KEY.set(headers[HEADER])
            elif (request.idempotent and self._key_idempotent) or self._key_any or _KEY.get() is not None:
                send = _send_keyed
        try:
            run = self._run
            if run is None:
                return self._general(send, request, call_next)
            seconds = request.timeout
            return run(
                send,
                self._seconds if seconds is None else seconds,
                request.idempotent,
                (call_next, request),
                _NO_KWARGS,
            )
        finally:
            if token is not None:
                _KEY.reset(token)

    def _general(
        self, send: Callable[[CallNext, Request], Response], request: Request, call_next: CallNext
    ) -> Response:
        # Fallback, failover, hedging, a bulkhead or an adaptive timeout: Resilient.run's layers.
        r = self.resilient
        fb = r.config.fallback

        def call(endpoint: Optional[str]) -> Response:
            return send(call_next, request if endpoint is None else request.replace(endpoint=endpoint))

        if fb is None:
            return r.run(call, idempotent=request.idempotent, timeout=request.timeout)
        return r.run(
            call,
            idempotent=request.idempotent,
            key=(fb.key or request_key)(request),
            backup=_backup(request, fb.backup, call_next),
            adapt=lambda level, value: _as_response(request, level, value),
            timeout=request.timeout,
        )


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
    every_request = True

    def __init__(self, *, name: str = "idempotency") -> None:
        self.name = name

    def __call__(self, request: Request, call_next: CallNext) -> Response:
        return self._logical(request, lambda: call_next(_with_key(request)))
