"""The public surface is deliberate (trio's test_exports is the model).

Every exported name resolves and has a docstring; the top-level list is
pinned, so adding or removing a public name is a visible change to this file;
every name a Client option or a decorator needs is importable from
``nexus_green`` itself; importing the package loads neither ssl nor the SOCKS5
driver until they are used.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
import types

import pytest

import nexus_green

PUBLIC_PACKAGES = [
    "nexus_green.connection",
    "nexus_green.middleware",
    "nexus_green.resilience",
    "nexus_green.monitoring",
    "nexus_green.protocol",
    "nexus_green.transport",
    "nexus_green.testing",
    "nexus_green.errors",
    "nexus_green.timers",
    "nexus_green.clock",
    "nexus_green.pipeline",
]

TOP_LEVEL = sorted(
    """
    BreakerConfig BudgetConfig BulkheadConfig BulkheadFull CacheMiddleware CallableStrategy CircuitBreaker
    CircuitOpen Client ClientCertificateRejected ClientClosed Clock CompressionMiddleware ConfigurationError
    ConnectError ConnectTimeout Connection ConnectionClosed ConnectionLost ConnectionOptions ConnectionPool
    ConnectionRefused DEFAULT DNSError DeadlineExceeded Event EventBus ExponentialBackoff FailoverConfig
    FakeClock FallbackConfig FixedInterval Frame HeartbeatTimeout HedgeConfig IdempotencyInProgress
    InvalidURL LeakyBucket LocalProtocolError MonitoringConfiguration NetworkError NexusError NexusTimeout
    Overloaded PerformanceMonitor Pipeline PolicyRejection PoolExhausted ProtocolError ProxyConfig
    RateLimitMiddleware RateLimited RateLimiter RemoteError RemoteProtocolError Request RequestTimeout
    ResilienceConfiguration ResilienceMiddleware Response RetryBudgetExhausted RetryConfig SYSTEM_CLOCK
    SlidingWindow StatsDSink SystemClock TLSConfig TLSError TimeoutConfig TokenBucket UsageError
    __version__ bulkhead cached circuit_breaker counted deadline default_bus failover fallback hedge
    rate_limited remaining resilient retry timed timeout
    """.split()
)


def test_the_top_level_names_are_pinned() -> None:
    assert sorted(nexus_green.__all__) == TOP_LEVEL
    assert len(set(nexus_green.__all__)) == len(nexus_green.__all__), "a name is exported twice"


@pytest.mark.parametrize("name", sorted(nexus_green.__all__))
def test_every_top_level_name_resolves_and_says_what_it_is(name: str) -> None:
    value = getattr(nexus_green, name)
    if isinstance(value, (type, types.FunctionType)):
        assert (value.__doc__ or "").strip(), f"nexus_green.{name} has no docstring"


@pytest.mark.parametrize("package", PUBLIC_PACKAGES)
def test_every_public_package_exports_what_it_lists(package: str) -> None:
    module = importlib.import_module(package)
    names = getattr(module, "__all__", None)
    assert names, f"{package} has no __all__"
    missing = [n for n in names if not hasattr(module, n)]
    assert not missing, f"{package}.__all__ lists names it does not have: {missing}"
    assert len(set(names)) == len(names)


def test_what_client_options_and_decorators_need_is_at_the_top() -> None:
    needed = {
        "tls": "TLSConfig",
        "proxy": "ProxyConfig",
        "reconnect": "ExponentialBackoff",
        "retry=": "RetryConfig",
        "breaker=": "BreakerConfig",
        "timeout=": "TimeoutConfig",
        "bulkhead=": "BulkheadConfig",
        "fallback=": "FallbackConfig",
        "rate policy": "TokenBucket",
        "statsd": "StatsDSink",
        "shared breaker": "CircuitBreaker",
        "default timeout marker": "DEFAULT",
    }
    for what, name in needed.items():
        assert name in nexus_green.__all__, f"{name} ({what}) must be importable from nexus_green"


def test_unknown_top_level_names_say_so() -> None:
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        nexus_green.Nope  # noqa: B018


def test_importing_the_package_loads_neither_ssl_nor_socks5() -> None:
    # pybreaker imports redis-py whenever it is installed (for its CircuitRedisStorage), and redis-py
    # imports ssl: that is pybreaker's doing, so the check runs as on a machine without redis-py.
    code = (
        "import sys; sys.modules['redis'] = None; import nexus_green; "
        "print('ssl' in sys.modules, 'nexus_green.transport.socks5' in sys.modules); "
        "nexus_green.TLSConfig; print('nexus_green.transport.tls' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.split() == ["False", "False", "True"]


def test_importing_the_package_does_not_load_the_shared_state_modules() -> None:
    """Redis-backed policies (docs/shared-state.md) load on first use: redis-py is an optional extra."""
    code = (
        "import sys, nexus_green; print(sorted(m for m in sys.modules if m.startswith('nexus_green') and 'redis' in m))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"


def test_the_deadline_function_does_not_shadow_its_module() -> None:
    import nexus_green.deadlines as module

    assert callable(nexus_green.deadline) and nexus_green.deadline is module.deadline
    assert isinstance(nexus_green.deadlines, types.ModuleType)
    assert {"budget", "deadline", "remaining", "DEFAULT"} <= set(module.__all__)
