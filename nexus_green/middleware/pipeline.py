"""The pipeline contract, re-exported from its home in layer L0 (:mod:`nexus_green.pipeline`).

The contract moved below ``middleware/`` and ``resilience/`` so that both can
implement it (resilience/ may not import middleware/). This module keeps the
old import path working; new code imports :mod:`nexus_green.pipeline`.

Example::

    >>> from nexus_green import pipeline
    >>> Pipeline is pipeline.Pipeline and ORDER_RETRY < ORDER_AUTH < ORDER_CACHE
    True
"""

from __future__ import annotations

from ..pipeline import (
    DEFAULT_ORDER,
    ORDER_AUTH,
    ORDER_BACKPRESSURE,
    ORDER_BULKHEAD,
    ORDER_CACHE,
    ORDER_CIRCUIT_BREAKER,
    ORDER_COMPRESSION,
    ORDER_CUSTOM,
    ORDER_FAILOVER,
    ORDER_FALLBACK,
    ORDER_HEDGE,
    ORDER_IDEMPOTENCY,
    ORDER_RATE_LIMIT,
    ORDER_RESILIENCE,
    ORDER_RETRY,
    ORDER_TIMEOUT,
    Composite,
    Conditional,
    FidsOrPredicate,
    Handler,
    Middleware,
    Pipeline,
    Predicate,
    bus_of,
    compose,
    order_of,
    request_matcher,
    when,
)

__all__ = [
    "Handler",
    "Middleware",
    "Pipeline",
    "Conditional",
    "Composite",
    "when",
    "compose",
    "DEFAULT_ORDER",
    "ORDER_RESILIENCE",
    "ORDER_IDEMPOTENCY",
    "ORDER_FALLBACK",
    "ORDER_CIRCUIT_BREAKER",
    "ORDER_RETRY",
    "ORDER_FAILOVER",
    "ORDER_HEDGE",
    "ORDER_BULKHEAD",
    "ORDER_TIMEOUT",
    "ORDER_AUTH",
    "ORDER_CUSTOM",
    "ORDER_CACHE",
    "ORDER_RATE_LIMIT",
    "ORDER_BACKPRESSURE",
    "ORDER_COMPRESSION",
    "FidsOrPredicate",
    "Predicate",
    "bus_of",
    "order_of",
    "request_matcher",
]
