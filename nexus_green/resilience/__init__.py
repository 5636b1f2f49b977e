"""Resilience policies (layer L4): breaker, retry, budget, timeouts, bulkhead, fallback, failover, hedging.

Every policy is a pure object on an injected clock (and random source) that
decides; a decorator (for any callable, blocking style) and a middleware (for
the Client pipeline) carry its decisions out. Nothing here monkey-patches,
and every wait yields to the gevent hub, so the policies behave the same in
an app that called ``gevent.monkey.patch_all()`` and in one that did not.

Modules: :mod:`.breaker`, :mod:`.retrying`, :mod:`.budget`, :mod:`.timeouts`,
:mod:`.bulkheads`, :mod:`.fallbacks`, :mod:`.failovers`, :mod:`.hedging`,
:mod:`.idempotency`, :mod:`.config` (ResilienceConfiguration, @resilient) and
:mod:`.middleware`. docs/resilience.md describes each with its defaults.

Example::

    >>> from nexus_green.resilience import resilient, RetryConfig
    >>> @resilient(retry=RetryConfig(max_attempts=2), idempotent=True)
    ... def ping():
    ...     return "pong"
    >>> ping()
    'pong'
"""

from __future__ import annotations

from .breaker import (
    STATE_CLOSED,
    STATE_HALF_OPEN,
    STATE_OPEN,
    BreakerConfig,
    CircuitBreaker,
    CircuitBreakerError,
    CircuitBreakerListener,
    CircuitBreakerOpen,
    CircuitBreakerStorage,
    CircuitMemoryStorage,
    CircuitRedisStorage,
    circuit_breaker,
)
from .budget import BudgetConfig, RetryBudget
from .bulkheads import Bulkhead, BulkheadConfig, bulkhead, get_bulkhead
from .config import ResilienceConfiguration, Resilient, resilient
from .failovers import Failover, FailoverConfig, FailoverPolicy, failover
from .fallbacks import Fallback, FallbackConfig, fallback
from .hedging import Hedge, HedgeConfig, hedge
from .idempotency import (
    HEADER as IDEMPOTENCY_HEADER,
)
from .idempotency import (
    IdempotencyGuard,
    IdempotencyInProgress,
    current_idempotency_key,
    idempotency_key,
    idempotent,
)
from .middleware import (
    BulkheadMiddleware,
    CircuitBreakerMiddleware,
    FailoverMiddleware,
    FallbackMiddleware,
    HedgeMiddleware,
    IdempotencyMiddleware,
    ResilienceMiddleware,
    RetryMiddleware,
    TimeoutMiddleware,
)
from .retrying import Retry, RetryConfig, RetryPolicy, retry
from .timeouts import AdaptiveTimeout, LatencySource, LatencyWindow, TimeoutConfig, TimeoutPolicy, timeout

__all__ = [
    "STATE_CLOSED",
    "STATE_HALF_OPEN",
    "STATE_OPEN",
    "AdaptiveTimeout",
    "BreakerConfig",
    "BudgetConfig",
    "Bulkhead",
    "BulkheadConfig",
    "BulkheadMiddleware",
    "CircuitBreaker",
    "CircuitBreakerError",
    "CircuitBreakerListener",
    "CircuitBreakerMiddleware",
    "CircuitBreakerOpen",
    "CircuitBreakerStorage",
    "CircuitMemoryStorage",
    "CircuitRedisStorage",
    "Failover",
    "FailoverConfig",
    "FailoverMiddleware",
    "FailoverPolicy",
    "Fallback",
    "FallbackConfig",
    "FallbackMiddleware",
    "Hedge",
    "HedgeConfig",
    "HedgeMiddleware",
    "IDEMPOTENCY_HEADER",
    "IdempotencyGuard",
    "IdempotencyInProgress",
    "IdempotencyMiddleware",
    "LatencySource",
    "LatencyWindow",
    "ResilienceConfiguration",
    "ResilienceMiddleware",
    "Resilient",
    "Retry",
    "RetryBudget",
    "RetryConfig",
    "RetryMiddleware",
    "RetryPolicy",
    "TimeoutConfig",
    "TimeoutMiddleware",
    "TimeoutPolicy",
    "bulkhead",
    "circuit_breaker",
    "current_idempotency_key",
    "failover",
    "fallback",
    "get_bulkhead",
    "hedge",
    "idempotency_key",
    "idempotent",
    "resilient",
    "retry",
    "timeout",
]

# The shared (Redis) breaker storage needs redis-py, an optional extra: these names load their module on first use.
_LAZY = {"SharedBreakerStorage": ".shared_breaker"}
__all__ += list(_LAZY)


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value
