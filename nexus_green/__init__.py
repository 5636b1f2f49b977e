"""nexus_green: a gevent-native, blocking-style client for the NexusKit BinaryProtocol.

Example::

    >>> import nexus_green
    >>> from nexus_green.testing import EmbeddedServer
    >>> with EmbeddedServer() as server, nexus_green.Client(server.url) as client:
    ...     client.request(b"ping", fid=1).body
    b'ping'
"""

from typing import Any

from .client import Client
from .clock import SYSTEM_CLOCK, Clock, FakeClock, SystemClock
from .connection import Connection, ConnectionOptions, ConnectionPool
from .connection.backoff import CallableStrategy, ExponentialBackoff, FixedInterval
from .deadlines import DEFAULT, deadline, remaining
from .errors import (
    BulkheadFull,
    CircuitOpen,
    ClientCertificateRejected,
    ClientClosed,
    ConfigurationError,
    ConnectError,
    ConnectionClosed,
    ConnectionLost,
    ConnectionRefused,
    ConnectTimeout,
    DeadlineExceeded,
    DNSError,
    HeartbeatTimeout,
    IdempotencyInProgress,
    InvalidURL,
    LocalProtocolError,
    NetworkError,
    NexusError,
    NexusTimeout,
    Overloaded,
    PolicyRejection,
    PoolExhausted,
    ProtocolError,
    RateLimited,
    RemoteError,
    RemoteProtocolError,
    RequestTimeout,
    RetryBudgetExhausted,
    TLSError,
    UsageError,
)
from .events import Event, EventBus, default_bus
from .middleware import (
    CacheMiddleware,
    CompressionMiddleware,
    LeakyBucket,
    Pipeline,
    RateLimiter,
    RateLimitMiddleware,
    SlidingWindow,
    TokenBucket,
    cached,
    rate_limited,
)
from .monitoring import MonitoringConfiguration, PerformanceMonitor, StatsDSink, counted, timed
from .protocol import Frame, Request, Response
from .resilience import (
    BreakerConfig,
    BudgetConfig,
    BulkheadConfig,
    CircuitBreaker,
    FailoverConfig,
    FallbackConfig,
    HedgeConfig,
    ResilienceConfiguration,
    ResilienceMiddleware,
    RetryConfig,
    TimeoutConfig,
    bulkhead,
    circuit_breaker,
    failover,
    fallback,
    hedge,
    resilient,
    retry,
    timeout,
)

__version__ = "0.1.0"

# Importing these loads ssl and the SOCKS5 driver; resolved on first use (PEP 562)
# so an application that uses neither pays nothing for them.
_LAZY = {"TLSConfig": "nexus_green.transport.tls", "ProxyConfig": "nexus_green.transport.socks5"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'nexus_green' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "Client",
    "Connection",
    "ConnectionOptions",
    "ConnectionPool",
    "Request",
    "Response",
    "Frame",
    "Clock",
    "SystemClock",
    "FakeClock",
    "SYSTEM_CLOCK",
    "deadline",
    "remaining",
    "Event",
    "EventBus",
    "default_bus",
    "NexusError",
    "NexusTimeout",
    "ConnectTimeout",
    "RequestTimeout",
    "DeadlineExceeded",
    "NetworkError",
    "ConnectError",
    "DNSError",
    "ConnectionRefused",
    "ConnectionLost",
    "HeartbeatTimeout",
    "IdempotencyInProgress",
    "TLSError",
    "ClientCertificateRejected",
    "ProtocolError",
    "LocalProtocolError",
    "RemoteProtocolError",
    "RemoteError",
    "PolicyRejection",
    "CircuitOpen",
    "RateLimited",
    "BulkheadFull",
    "RetryBudgetExhausted",
    "PoolExhausted",
    "Overloaded",
    "UsageError",
    "InvalidURL",
    "ConfigurationError",
    "ClientClosed",
    "ConnectionClosed",
    "Pipeline",
    "cached",
    "rate_limited",
    "PerformanceMonitor",
    "MonitoringConfiguration",
    "timed",
    "counted",
    "ResilienceConfiguration",
    "resilient",
    "circuit_breaker",
    "retry",
    "timeout",
    "bulkhead",
    "fallback",
    "failover",
    "hedge",
    "DEFAULT",
    "TLSConfig",
    "ProxyConfig",
    "ExponentialBackoff",
    "FixedInterval",
    "CallableStrategy",
    "CacheMiddleware",
    "CompressionMiddleware",
    "RateLimitMiddleware",
    "ResilienceMiddleware",
    "RateLimiter",
    "TokenBucket",
    "LeakyBucket",
    "SlidingWindow",
    "StatsDSink",
    "CircuitBreaker",
    "RetryConfig",
    "BreakerConfig",
    "BudgetConfig",
    "TimeoutConfig",
    "BulkheadConfig",
    "FallbackConfig",
    "FailoverConfig",
    "HedgeConfig",
    "__version__",
]
