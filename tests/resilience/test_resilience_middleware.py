"""The resilience middlewares, tested directly with a fake call_next."""

from __future__ import annotations

from typing import Any, Optional

import gevent
import pytest

from nexus_green.clock import FakeClock
from nexus_green.errors import (
    CircuitOpen,
    ConfigurationError,
    ConnectionLost,
    ConnectionRefused,
    RemoteError,
    RequestTimeout,
)
from nexus_green.events import EventBus
from nexus_green.protocol.messages import Request, Response
from nexus_green.resilience import (
    Bulkhead,
    BulkheadMiddleware,
    CircuitBreaker,
    CircuitBreakerMiddleware,
    Failover,
    FailoverMiddleware,
    Fallback,
    FallbackConfig,
    FallbackMiddleware,
    Hedge,
    HedgeMiddleware,
    IdempotencyMiddleware,
    ResilienceConfiguration,
    ResilienceMiddleware,
    Retry,
    RetryConfig,
    RetryMiddleware,
    TimeoutConfig,
    TimeoutMiddleware,
    TimeoutPolicy,
)
from nexus_green.resilience.idempotency import HEADER, idempotency_key
from nexus_green.resilience.middleware import request_key


class FakeNext:
    """call_next that fails the first ``failures`` calls with ``exc``."""

    def __init__(self, failures: int = 0, exc: Optional[BaseException] = None) -> None:
        self.failures = failures
        self.exc = exc or ConnectionLost("reset")
        self.requests: list[Request] = []

    def __call__(self, request: Request) -> Response:
        self.requests.append(request)
        if len(self.requests) <= self.failures:
            raise self.exc
        return Response(body=b"ok:" + request.endpoint.encode(), fid=request.fid)

    @property
    def keys(self) -> list[str]:
        return [r.headers.get(HEADER, "") for r in self.requests]


def mw(**overrides: Any) -> ResilienceMiddleware:
    return ResilienceMiddleware(clock=FakeClock(), bus=EventBus(), **overrides)


def test_retries_idempotent_requests_with_one_key_on_every_attempt() -> None:
    nxt = FakeNext(failures=2)
    resp = mw()(Request(body=b"q", idempotent=True), nxt)
    assert resp.body == b"ok:" and len(nxt.requests) == 3
    assert len(set(nxt.keys)) == 1 and len(nxt.keys[0]) == 32
    nxt2 = FakeNext()
    mw()(Request(idempotent=True), nxt2)
    assert nxt2.keys[0] != nxt.keys[0]


def test_non_idempotent_requests_are_not_resent() -> None:
    nxt = FakeNext(failures=1)
    with pytest.raises(ConnectionLost):
        mw()(Request(idempotent=False), nxt)
    # Nothing resends it once it may have been sent, so no copy can reach the server twice: no key.
    assert len(nxt.requests) == 1 and nxt.keys == [""]


def test_a_not_sent_failure_is_resent_without_a_key() -> None:
    nxt = FakeNext(failures=1, exc=ConnectionRefused())
    assert mw()(Request(idempotent=False), nxt).ok
    assert len(nxt.requests) == 2 and nxt.keys == ["", ""]  # the server never saw the first copy


def test_an_outer_logical_request_key_is_sent_on_every_attempt() -> None:
    # An outer layer (here an explicit key; @resilient or @idempotent alike) may send the whole call again.
    for idempotent, failures in ((False, 0), (True, 1)):
        nxt = FakeNext(failures=failures)
        with idempotency_key("outer-key"):
            assert mw()(Request(idempotent=idempotent), nxt).ok
        assert nxt.keys == ["outer-key"] * (failures + 1)


def test_idempotent_requests_get_a_key_only_where_something_may_resend_them() -> None:
    nxt = FakeNext()
    mw()(Request(idempotent=True), nxt)
    mw(retry=None)(Request(idempotent=True), nxt)  # nothing here resends it
    mw(retry=RetryConfig(max_attempts=1))(Request(idempotent=True), nxt)
    assert len(nxt.keys[0]) == 32 and nxt.keys[1:] == ["", ""]


def test_a_key_already_in_the_headers_is_kept() -> None:
    nxt = FakeNext(failures=1)
    mw()(Request(idempotent=True, headers={HEADER: "caller-key"}), nxt)
    assert nxt.keys == ["caller-key", "caller-key"]


def test_request_timeout_is_used() -> None:
    def stuck(request: Request) -> Response:
        gevent.sleep(30)
        raise AssertionError("not reached")

    with pytest.raises(RequestTimeout):
        mw(retry=None)(Request(timeout=0.01), stuck)


def test_fallback_values_become_responses() -> None:
    m = mw(retry=None, fallback=FallbackConfig(default=b"default body"))
    resp = m(Request(fid=4), FakeNext(failures=1, exc=TimeoutError()))
    assert (resp.body, resp.fid, resp.cached) == (b"default body", 4, "fallback:default")
    cached = Response(body=b"from cache", code=200)
    req = Request(body=b"k", fid=2, endpoint="svc:1")
    m2 = mw(retry=None, fallback=FallbackConfig(cache={request_key(req): cached}))
    assert m2(req, FakeNext(failures=1)).cached == "fallback:cache"
    m3 = mw(retry=None, fallback=FallbackConfig(default="text"))
    with pytest.raises(ConfigurationError, match="Response or bytes"):
        m3(Request(), FakeNext(failures=1, exc=TimeoutError()))


def test_backup_endpoint_resends_to_it() -> None:
    nxt = FakeNext(failures=1, exc=RemoteError("unavailable", code=503))
    m = mw(retry=None, fallback=FallbackConfig(backup="backup:7600"))
    resp = m(Request(endpoint="primary:7600"), nxt)
    assert resp.body == b"ok:backup:7600" and resp.cached == "fallback:backup"
    assert nxt.keys[0] == nxt.keys[1]


def test_failover_replaces_the_endpoint() -> None:
    from nexus_green.resilience import FailoverConfig

    class Down(FakeNext):
        def __call__(self, request: Request) -> Response:
            self.requests.append(request)
            if request.endpoint == "a":
                raise ConnectionRefused()
            return Response(body=request.endpoint.encode())

    m = mw(retry=None, failover=FailoverConfig(endpoints=("a", "b")))
    for idempotent in (True, False):
        nxt = Down()
        assert m(Request(idempotent=idempotent), nxt).body == b"b"
        assert [r.endpoint for r in nxt.requests] == ["a", "b"]
        if idempotent:  # may be sent to both: one key
            assert nxt.keys[0] == nxt.keys[1] and len(nxt.keys[0]) == 32
        else:  # moved on because nothing was sent: no key needed
            assert nxt.keys == ["", ""]


def test_without_idempotency_keys_no_header_is_added() -> None:
    nxt = FakeNext()
    m = ResilienceMiddleware(ResilienceConfiguration(idempotency_keys=False), bus=EventBus())
    m(Request(), nxt)
    assert nxt.keys == [""] and m.name == "resilience"


def test_circuit_breaker_middleware() -> None:
    cb = CircuitBreaker(clock=FakeClock(), max_consecutive_failures=0, bus=EventBus())
    m = CircuitBreakerMiddleware(cb)
    with pytest.raises(ConnectionLost):
        m(Request(), FakeNext(failures=1))
    with pytest.raises(CircuitOpen):
        m(Request(), FakeNext())
    assert m.name == "circuit_breaker"


def test_retry_middleware() -> None:
    nxt = FakeNext(failures=1)
    m = RetryMiddleware(Retry(clock=FakeClock(), bus=EventBus()))
    assert m(Request(idempotent=True), nxt).ok
    assert len(nxt.requests) == 2 and nxt.keys[0] == nxt.keys[1] and m.name == "retry"


def test_timeout_middleware() -> None:
    m = TimeoutMiddleware(TimeoutPolicy(30.0))

    def stuck(request: Request) -> Response:
        gevent.sleep(30)
        raise AssertionError("not reached")

    with pytest.raises(RequestTimeout):
        m(Request(timeout=0.01), stuck)
    assert m(Request(), FakeNext()).ok and m.name == "timeout"


def test_bulkhead_middleware() -> None:
    bh = Bulkhead("mw", max_concurrent=1, bus=EventBus())
    m = BulkheadMiddleware(bh)
    seen: list[int] = []

    def nxt(request: Request) -> Response:
        seen.append(bh.active)
        return Response()

    m(Request(), nxt)
    assert seen == [1] and bh.active == 0 and m.name == "bulkhead"


def test_fallback_middleware() -> None:
    backup_calls: list[Request] = []

    def backup(request: Request) -> Response:
        backup_calls.append(request)
        return Response(body=b"backup")

    m = FallbackMiddleware(Fallback(FallbackConfig(backup=backup), bus=EventBus()))
    resp = m(Request(fid=9), FakeNext(failures=1, exc=RemoteError(code=503)))
    assert resp.body == b"backup" and resp.cached == "fallback:backup" and backup_calls[0].fid == 9
    assert m(Request(), FakeNext()).ok and m.name == "fallback"
    m2 = FallbackMiddleware(Fallback(FallbackConfig(key=lambda r: r.fid, cache={1: b"one"}), bus=EventBus()))
    assert m2(Request(fid=1), FakeNext(failures=1)).body == b"one"


def test_failover_middleware() -> None:
    nxt = FakeNext(failures=1, exc=ConnectionRefused())
    m = FailoverMiddleware(Failover(endpoints=("x", "y"), bus=EventBus()))
    assert m(Request(), nxt).body == b"ok:y"
    assert [r.endpoint for r in nxt.requests] == ["x", "y"] and m.name == "failover"


def test_hedge_middleware(leakcheck: None) -> None:
    calls: list[Request] = []

    def nxt(request: Request) -> Response:
        calls.append(request)
        if len(calls) == 1:
            gevent.sleep(30)
        return Response(body=b"hedged")

    m = HedgeMiddleware(Hedge(delay=0.01, bus=EventBus()))
    assert m(Request(idempotent=True), nxt).body == b"hedged"
    assert len(calls) == 2 and calls[0].headers[HEADER] == calls[1].headers[HEADER] and m.name == "hedge"


def test_idempotency_middleware() -> None:
    nxt = FakeNext()
    m = IdempotencyMiddleware()
    m(Request(), nxt)
    m(Request(headers={HEADER: "mine"}), nxt)
    assert len(nxt.keys[0]) == 32 and nxt.keys[1] == "mine" and m.name == "idempotency"


def test_shared_resilient_instance() -> None:
    from nexus_green.resilience import Resilient

    r = Resilient(ResilienceConfiguration(timeout=TimeoutConfig(request=1.0)), bus=EventBus())
    m = ResilienceMiddleware(resilient=r, name="custom")
    assert m.resilient is r and m.name == "custom" and m(Request(), FakeNext()).ok
