"""The pipeline contract in L0 (nexus_green.pipeline): the order of every built-in, auth inside the retries, buses.

Issue 13, items 2 and 8. The last test reruns this module after ``gevent.monkey.patch_all()``.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from typing import Any

import pytest

import nexus_green.middleware.pipeline as old_home
from nexus_green import Client, pipeline
from nexus_green.errors import ConfigurationError
from nexus_green.events import Event, EventBus, default_bus
from nexus_green.middleware import (
    BackpressureMiddleware,
    CacheMiddleware,
    CompressionAnalyzer,
    CompressionMiddleware,
    RateLimiter,
    RateLimitMiddleware,
    TwoLevelCache,
)
from nexus_green.pipeline import (
    DEFAULT_ORDER,
    ORDER_AUTH,
    ORDER_CUSTOM,
    Handler,
    Pipeline,
    bus_of,
    order_of,
)
from nexus_green.protocol.frames import Frame
from nexus_green.protocol.messages import Request, Response
from nexus_green.resilience.breaker import CircuitBreaker
from nexus_green.resilience.bulkheads import Bulkhead
from nexus_green.resilience.failovers import Failover, FailoverConfig
from nexus_green.resilience.fallbacks import Fallback, FallbackConfig
from nexus_green.resilience.hedging import Hedge, HedgeConfig
from nexus_green.resilience.middleware import (
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
from nexus_green.resilience.retrying import Retry, RetryConfig
from nexus_green.resilience.timeouts import TimeoutPolicy
from nexus_green.testing import EmbeddedServer, Reply, run_module_patched, running_patched

pytestmark = pytest.mark.usefixtures("leakcheck")

FID_FLAKY = 40
FAST_RETRY = RetryConfig(max_attempts=3, base_delay=0.001, max_delay=0.005)

# The documented default order of every built-in, outermost first (docs/middleware.md).
EXPECTED = [
    ("resilience", 100),
    ("idempotency", 100),
    ("fallback", 110),
    ("circuit_breaker", 120),
    ("retry", 130),
    ("failover", 134),
    ("hedge", 138),
    ("bulkhead", 142),
    ("timeout", 146),
    ("cache", 200),
    ("rate_limit", 300),
    ("backpressure", 400),
    ("compression", 500),
]


def every_builtin() -> list[Any]:
    """One of each built-in middleware with its defaults, innermost first (the pipeline sorts them)."""
    return [
        CompressionMiddleware(),
        BackpressureMiddleware(),
        RateLimitMiddleware(),
        CacheMiddleware(TwoLevelCache(l2=None), when={1}),
        TimeoutMiddleware(TimeoutPolicy(1.0)),
        BulkheadMiddleware(Bulkhead()),
        HedgeMiddleware(Hedge(HedgeConfig(delay=0.5))),
        FailoverMiddleware(Failover(FailoverConfig(endpoints=("a:1", "b:2")))),
        RetryMiddleware(Retry(FAST_RETRY)),
        CircuitBreakerMiddleware(CircuitBreaker()),
        FallbackMiddleware(Fallback(FallbackConfig(default=b"fallback"))),
        ResilienceMiddleware(),  # equal orders keep the order given
        IdempotencyMiddleware(),
    ]


class Auth:
    """A user's auth middleware: signs every request it sees with a fresh token."""

    name = "auth"
    order = ORDER_AUTH

    def __init__(self) -> None:
        self.signed = 0

    def __call__(self, request: Request, call_next: Handler) -> Response:
        self.signed += 1
        return call_next(request.with_headers({"authorization": f"token-{self.signed}"}))


def flaky_server(failures: int) -> tuple[EmbeddedServer, list[str]]:
    """An EmbeddedServer whose FID_FLAKY answers 503 ``failures`` times, then echoes; it records each token."""
    seen: list[str] = []

    def flaky(frame: Frame) -> Any:
        seen.append(frame.headers.get("authorization", ""))
        if len(seen) <= failures:
            return Reply(b"busy", code=503)
        return frame.body

    server = EmbeddedServer()
    server.register(FID_FLAKY, flaky)
    return server, seen


# ---------------------------------------------------------------------------- order
def test_every_builtin_has_its_documented_default_order() -> None:
    mws = every_builtin()
    assert all("order" in vars(type(m)) for m in mws), "every built-in declares its order on its class"
    assert [(m.name, order_of(m)) for m in Pipeline(mws).middlewares] == EXPECTED
    assert {name: DEFAULT_ORDER[name] for name, _ in EXPECTED} == dict(EXPECTED)
    assert DEFAULT_ORDER["auth"] == DEFAULT_ORDER["custom"] == 150
    # Resilience, then auth (inside every retry), then the cache (auth comes before its key).
    assert DEFAULT_ORDER["timeout"] < ORDER_AUTH < DEFAULT_ORDER["cache"]
    assert list(DEFAULT_ORDER.values()) == sorted(DEFAULT_ORDER.values())


def test_a_middleware_without_order_is_custom_and_lands_inside_the_resilience() -> None:
    class NoOrder:
        name = "mine"

        def __call__(self, request: Request, call_next: Handler) -> Response:
            return call_next(request)

    assert order_of(NoOrder()) == ORDER_CUSTOM
    names = [
        m.name
        for m in Pipeline(
            [NoOrder(), CacheMiddleware(TwoLevelCache(l2=None), when={1}), ResilienceMiddleware()]
        ).middlewares
    ]
    assert names == ["resilience", "mine", "cache"]


def test_the_old_import_path_is_the_same_contract() -> None:
    for name in old_home.__all__:
        assert getattr(old_home, name) is getattr(pipeline, name), name
    assert set(pipeline.__all__) <= set(old_home.__all__) | {"Handler"}


def test_the_contract_loads_without_any_layer_above_l0() -> None:
    # What import-linter's layers contract checks statically, seen at run time: in a fresh
    # interpreter, with the package's __init__ (the whole public API) left out, the contract
    # loads nothing of nexus_green but itself and the errors.
    code = (
        "import importlib.util, sys, types\n"
        "pkg = types.ModuleType('nexus_green')\n"
        "pkg.__path__ = list(importlib.util.find_spec('nexus_green').submodule_search_locations)\n"
        "sys.modules['nexus_green'] = pkg\n"
        "import nexus_green.pipeline\n"
        "print(sorted(m for m in sys.modules if m.startswith('nexus_green.')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True).stdout
    assert ast.literal_eval(out) == ["nexus_green.errors", "nexus_green.pipeline"]


# ---------------------------------------------------------------------------- auth inside retries, real wire
@pytest.mark.parametrize("resilience", ["composed", "retry"])
def test_auth_runs_inside_the_retries_through_a_client(resilience: str) -> None:
    auth = Auth()
    retrying: Any = (
        ResilienceMiddleware(retry=FAST_RETRY) if resilience == "composed" else RetryMiddleware(Retry(FAST_RETRY))
    )
    server, seen = flaky_server(failures=2)
    with server:
        # Auth listed first: the pipeline still puts it inside the retries, by order.
        with Client(server.url, middlewares=[auth, retrying], heartbeat_interval=None, timeout=5.0) as client:
            response = client.request(b"hello", fid=FID_FLAKY, idempotent=True)
    assert response.body == b"hello"
    # Every attempt went through auth and reached the wire with its own, fresh token.
    assert seen == ["token-1", "token-2", "token-3"]
    assert auth.signed == 3


def test_auth_outside_the_retries_signs_once_when_placed_there_explicitly() -> None:
    # The old behaviour, kept reachable on purpose: sort=False runs exactly the order given.
    auth = Auth()
    server, seen = flaky_server(failures=1)
    with server:
        mws = Pipeline([auth, RetryMiddleware(Retry(FAST_RETRY))], sort=False)
        with Client(server.url, middlewares=mws, heartbeat_interval=None, timeout=5.0) as client:
            assert client.request(b"x", fid=FID_FLAKY, idempotent=True).body == b"x"
    assert seen == ["token-1", "token-1"] and auth.signed == 1


# ---------------------------------------------------------------------------- buses
def test_bus_of_reports_the_bus_each_builtin_emits_on() -> None:
    bus = EventBus()
    assert bus_of(ResilienceMiddleware(bus=bus)) is bus
    assert bus_of(ResilienceMiddleware()) is default_bus
    assert bus_of(RateLimitMiddleware(RateLimiter(bus=bus))) is bus
    assert bus_of(RateLimitMiddleware()) is default_bus
    assert bus_of(BackpressureMiddleware(bus=bus)) is bus
    assert bus_of(BackpressureMiddleware(client=None, bus=bus)) is bus
    assert bus_of(BackpressureMiddleware(client=None)) is default_bus
    assert bus_of(CompressionMiddleware(analyzer=CompressionAnalyzer(bus=bus))) is bus
    assert bus_of(CompressionMiddleware(algorithm="gzip")) is None  # no analyzer: emits nothing
    assert bus_of(CacheMiddleware(TwoLevelCache(l2=None), when={1})) is None


def test_a_client_refuses_a_middleware_on_another_bus() -> None:
    mine = EventBus()
    with pytest.raises(ConfigurationError, match="'resilience' emits on another EventBus"):
        Client("tcp://127.0.0.1:1", bus=mine, middlewares=[ResilienceMiddleware()])
    with pytest.raises(ConfigurationError, match="'rate_limit'"):
        Client("tcp://127.0.0.1:1", middlewares=Pipeline([RateLimitMiddleware(RateLimiter(bus=mine))]))


def test_client_and_middleware_events_share_the_clients_bus() -> None:
    bus = EventBus()
    events: list[Event] = []
    bus.subscribe(events.append)
    default_events: list[Event] = []
    unsubscribe = default_bus.subscribe(default_events.append, prefix="retry.")
    try:
        server, seen = flaky_server(failures=1)
        with server:
            mws = [ResilienceMiddleware(retry=FAST_RETRY, bus=bus)]
            with Client(server.url, bus=bus, middlewares=mws, heartbeat_interval=None, timeout=5.0) as client:
                assert client.request(b"q", fid=FID_FLAKY, idempotent=True).body == b"q"
    finally:
        unsubscribe()
    names = [e.name for e in events]
    assert "retry.attempt" in names, names
    assert any(n.startswith("connect.") for n in names), names
    assert default_events == [] and len(seen) == 2


# ---------------------------------------------------------------------------- patched
@pytest.mark.skipif(running_patched(), reason="the patched run would nest")
def test_module_passes_under_patch_all() -> None:
    run = run_module_patched(__file__)
    assert run.returncode == 0, run.report()
