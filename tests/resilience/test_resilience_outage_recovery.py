"""Issue 13, items 3 and 12, through a real Client: a fallback default rides out an outage, the breaker's rejections
included, and the breaker's defaults let a restarted backend serve again within 5 s of its restart.

Time is a FakeClock (it jumps when the hub idles), so outages of a minute take milliseconds and the recovery
figure is exact; loopback I/O is waited for with bounded real-time loops.
"""

from __future__ import annotations

from typing import Any

import pytest

from nexus_green import Client
from nexus_green.clock import FakeClock
from nexus_green.errors import (
    BulkheadFull,
    CircuitOpen,
    ConfigurationError,
    Overloaded,
    PoolExhausted,
    RateLimited,
    RemoteError,
)
from nexus_green.events import EventBus
from nexus_green.resilience import BreakerConfig, CircuitBreaker, FallbackConfig, fallback, resilient
from nexus_green.testing import FID_ECHO, RestartableServer, run_module_patched, settle_io

FALLBACK = b"fallback"


def _kill(server: RestartableServer, client: Client) -> None:
    server.wait_for(lambda s: s.connections >= 1)
    server.kill()
    assert settle_io(lambda: client.pool.stats()["connected"] == 0), client.pool


def _states(bus: EventBus) -> list[tuple[float, str]]:
    seen: list[tuple[float, str]] = []
    bus.subscribe(lambda e: seen.append((e.attrs.get("open_for", 0.0), e.attrs["new"])), prefix="breaker.state")
    return seen


def test_resilient_default_keeps_answering_through_an_outage_and_serves_within_5s_of_the_restart() -> None:
    clock = FakeClock()
    bus = EventBus()
    states = _states(bus)
    with RestartableServer() as server, Client(server.url, clock=clock, heartbeat_interval=None) as client:

        @resilient(fallback=FallbackConfig(default=FALLBACK), clock=clock, bus=bus)
        def echo(body: bytes) -> bytes:
            return client.request(body, FID_ECHO, timeout=0.2).body

        assert echo(b"up") == b"up"
        _kill(server, client)

        # A minute of outage, a call every 100 ms: every call is answered (no error escapes), the breaker
        # opens, reopens on failed trials, and its rejections are served the default too.
        answers = []
        started = clock.now()
        while clock.now() - started < 60.0:
            answers.append(echo(b"x"))
            clock.sleep(0.1)
        assert set(answers) == {FALLBACK}
        open_for = [d for d, new in states if new == "open"]
        assert len(open_for) >= 5, open_for  # it reopened several times: the doubling was exercised...
        assert max(open_for) <= 3.0 + 1e-9, open_for  # ...and stayed capped at 3 s

        server.restart()
        restarted = clock.now()
        while echo(b"back") != b"back":
            assert clock.now() - restarted < 10.0, f"no answer 10 s after the restart: {client.pool!r}"
            clock.sleep(0.1)
        recovered = clock.now() - restarted
        assert recovered <= 5.0, f"first real answer {recovered:.2f} s after the restart"
        # and it stays recovered: the breaker closes on its trials
        for _ in range(5):
            assert echo(b"again") == b"again"
        assert echo.resilient.breaker.current_state == "closed"  # type: ignore[attr-defined]


def test_the_old_defaults_would_not_have_recovered_within_5s() -> None:
    # The same breaker with the old defaults (30 s doubling to 300 s): the figure the test above improves on.
    clock = FakeClock()
    cb = CircuitBreaker(clock=clock, bus=EventBus(), reset_jitter=0, reset_timeout=30.0, max_reset_timeout=300.0)
    new = CircuitBreaker(clock=clock, bus=EventBus(), reset_jitter=0)
    for breaker in (cb, new):
        for _ in range(6):
            breaker.record(breaker.admit(), ConnectionRefusedError())
    clock.advance(5.0)
    assert cb.current_state == "open" and new.current_state == "half-open"


@pytest.mark.parametrize(
    "error",
    [
        CircuitOpen("open"),
        BulkheadFull("full"),
        RateLimited("slow down"),
        PoolExhausted("no connection"),
        Overloaded("shed"),
        RemoteError("boom", code=500),
        RemoteError("unavailable", code=503),
        ValueError("a foreign error"),
    ],
    ids=lambda e: f"{type(e).__name__}{getattr(e, 'code', '') or ''}",
)
def test_a_default_covers_every_failure_and_rejection(error: Exception) -> None:
    @fallback(default="d", bus=EventBus())
    def call() -> str:
        raise error

    @resilient(fallback=FallbackConfig(default="d"), retry=None, clock=FakeClock(), bus=EventBus())
    def composed() -> str:
        raise error

    assert call() == "d"
    assert all(composed() == "d" for _ in range(10))  # past the breaker's opening: its rejections too


def test_usage_errors_are_not_covered_and_on_narrows() -> None:
    @fallback(default="d", bus=EventBus())
    def misconfigured() -> str:
        raise ConfigurationError("fix me")

    with pytest.raises(ConfigurationError):
        misconfigured()

    @fallback(default="d", on=lambda e: isinstance(e, CircuitOpen), bus=EventBus())
    def narrow(exc: Exception) -> str:
        raise exc

    assert narrow(CircuitOpen()) == "d"
    with pytest.raises(RemoteError):
        narrow(RemoteError(code=500))
    with pytest.raises(ConfigurationError, match="on= takes"):
        FallbackConfig(default=1, on=(ValueError, "nope"))  # type: ignore[arg-type]


def test_breaker_rejections_through_a_client_are_served_by_the_default() -> None:
    # Six failures open the breaker (the "after six calls"); the seventh call is a rejection.
    clock = FakeClock()
    bus = EventBus()
    rejected: list[Any] = []
    bus.subscribe(rejected.append, prefix="breaker.rejected")
    with RestartableServer() as server, Client(server.url, clock=clock, heartbeat_interval=None) as client:
        client.request(b"up", FID_ECHO, timeout=1)
        _kill(server, client)

        @resilient(fallback=FallbackConfig(default=FALLBACK), breaker=BreakerConfig(), clock=clock, bus=bus)
        def echo() -> bytes:
            return client.request(b"x", FID_ECHO, timeout=0.2).body

        assert [echo() for _ in range(10)] == [FALLBACK] * 10
        assert rejected, "the breaker never rejected: the test did not reach the rejections"


def test_module_passes_under_patch_all() -> None:
    run = run_module_patched(__file__)
    assert run.returncode == 0, run.report()
