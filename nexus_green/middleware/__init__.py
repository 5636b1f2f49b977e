"""The request pipeline and its middlewares (layer L4): cache, rate limit, backpressure, compression.

A Client runs each call through a :class:`Pipeline` of middlewares around its
terminal "send on the wire" handler; every middleware also works alone, and
the caches and limiters are decorators for any callable (:func:`cached`,
:func:`rate_limited`). docs/middleware.md explains each piece with its defaults.

Example::

    >>> from nexus_green.protocol.messages import Request, Response
    >>> pipeline = Pipeline([CompressionMiddleware(), CacheMiddleware(TwoLevelCache(l2=None), when={1})])
    >>> [m.name for m in pipeline.middlewares]
    ['cache', 'compression']
    >>> handler = pipeline.wrap(lambda r: Response(body=b"pong"))
    >>> handler(Request(fid=1)).cached, handler(Request(fid=1)).cached
    ('', 'l1')
"""

from ..pipeline import (
    DEFAULT_ORDER,
    ORDER_AUTH,
    ORDER_BACKPRESSURE,
    ORDER_CACHE,
    ORDER_COMPRESSION,
    ORDER_CUSTOM,
    ORDER_RATE_LIMIT,
    ORDER_RESILIENCE,
    Composite,
    Conditional,
    Handler,
    Middleware,
    Pipeline,
    compose,
    when,
)
from .backpressure import BackpressureGate, BackpressureMiddleware, BackpressureStats, Watermarks
from .cache import (
    CacheEntry,
    CacheMiddleware,
    CacheStats,
    DiskCache,
    MemoryCache,
    TwoLevelCache,
    TwoLevelStats,
    cached,
    call_key,
    request_key,
)
from .compression import (
    LEVELS,
    AlgorithmStats,
    CompressionAnalyzer,
    CompressionChoice,
    CompressionMiddleware,
    CompressionStats,
    DictionaryRegistry,
    ZstdDictionary,
    choose_compression,
)
from .offload import (
    DEFAULT_DECODE_SLOTS,
    DEFAULT_OFFLOAD_THRESHOLD,
    DecodeSlots,
    decode_off_hub,
    decode_slots,
    run_off_hub,
    set_decode_slots,
)
from .ratelimit import (
    LeakyBucket,
    RateDecision,
    RateLimiter,
    RateLimitMiddleware,
    RatePolicy,
    SlidingWindow,
    TokenBucket,
    rate_limited,
)

__all__ = [
    "AlgorithmStats",
    "BackpressureGate",
    "BackpressureMiddleware",
    "BackpressureStats",
    "CacheEntry",
    "CacheMiddleware",
    "CacheStats",
    "Composite",
    "CompressionAnalyzer",
    "CompressionChoice",
    "CompressionMiddleware",
    "CompressionStats",
    "Conditional",
    "DEFAULT_DECODE_SLOTS",
    "DEFAULT_OFFLOAD_THRESHOLD",
    "DEFAULT_ORDER",
    "DecodeSlots",
    "DictionaryRegistry",
    "DiskCache",
    "Handler",
    "LEVELS",
    "LeakyBucket",
    "MemoryCache",
    "Middleware",
    "ORDER_AUTH",
    "ORDER_BACKPRESSURE",
    "ORDER_CACHE",
    "ORDER_COMPRESSION",
    "ORDER_CUSTOM",
    "ORDER_RATE_LIMIT",
    "ORDER_RESILIENCE",
    "Pipeline",
    "RateDecision",
    "RateLimitMiddleware",
    "RateLimiter",
    "RatePolicy",
    "SlidingWindow",
    "TokenBucket",
    "TwoLevelCache",
    "TwoLevelStats",
    "Watermarks",
    "ZstdDictionary",
    "cached",
    "call_key",
    "choose_compression",
    "compose",
    "decode_off_hub",
    "decode_slots",
    "rate_limited",
    "request_key",
    "run_off_hub",
    "set_decode_slots",
    "when",
]

# Shared (Redis) rate limits need redis-py, an optional extra: these names load their module on first use.
_LAZY = {"SharedLimits": ".shared_ratelimit", "SharedRate": ".shared_ratelimit", "RedisCache": ".cache_redis"}
__all__ += list(_LAZY)


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value
