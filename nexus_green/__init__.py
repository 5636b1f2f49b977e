"""nexus_green: a gevent-native, blocking-style client for the NexusKit BinaryProtocol.

Example::

    >>> import nexus_green
    >>> from nexus_green.testing import EmbeddedServer
    >>> with EmbeddedServer() as server, nexus_green.Client(server.url) as client:
    ...     client.request(b"ping", fid=1).body
    b'ping'
"""

from .client import Client
from .clock import SYSTEM_CLOCK, Clock, FakeClock, SystemClock
from .connection import Connection, ConnectionOptions, ConnectionPool
from .deadline import deadline, remaining
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
from .middleware import Pipeline, cached, rate_limited
from .monitoring import MonitoringConfiguration, PerformanceMonitor, counted, timed
from .protocol import Frame, Request, Response
from .resilience import (
    ResilienceConfiguration,
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
    "__version__",
]
