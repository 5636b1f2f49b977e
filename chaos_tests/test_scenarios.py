"""Each scenario of nexus_green.chaos.SCENARIOS, with a real Client through the ChaosProxy, and its outcome asserted.

The clients are configured the way users configure them: ``@resilient`` on
a call site (breaker, fallback, timeouts), ``ResilienceMiddleware`` in the
Client's pipeline (retry with budget and one idempotency key per logical
request), the server's idempotency guard. The ``chaos`` fixture
(conftest.py) checks leaks and hub stalls and prints the recovery times.
"""

from __future__ import annotations

import resource
import time
from typing import Any

import pytest
from conftest import FID_APPLY, RECOVERY_BOUND, Harness

from nexus_green.chaos import SCENARIOS, open_fds
from nexus_green.errors import NexusError, RemoteError, RequestTimeout, RetryBudgetExhausted
from nexus_green.events import EventBus
from nexus_green.resilience import (
    BudgetConfig,
    FallbackConfig,
    ResilienceConfiguration,
    ResilienceMiddleware,
    RetryConfig,
    TimeoutConfig,
    resilient,
)

FALLBACK = b"fallback"
TIMEOUT_SLACK = 0.1  # a timeout fires within its bound plus this


def assert_recovered(run: Any) -> None:
    assert run.recovery is not None, f"{run.name}: no success within {2 * RECOVERY_BOUND} s of the fault's end"
    assert run.recovery <= RECOVERY_BOUND, f"{run.name}: recovered after {run.recovery:.3f} s"


def retrying_client(chaos: Harness, url: str, bus: EventBus, **config: Any) -> Any:
    """A Client with ResilienceMiddleware: retry (idempotent, or not sent), budget, one key per logical request."""
    config.setdefault("retry", RetryConfig(max_attempts=10, base_delay=0.01, max_delay=0.05))
    config.setdefault("timeout", TimeoutConfig(request=0.25, overall=5.0))
    # Sized for this load (a quarter of the calls may be retried): the budget test below binds it tighter.
    config.setdefault("budget", BudgetConfig(window=10.0, ratio=0.5))
    config.setdefault("breaker", None)
    mw = ResilienceMiddleware(ResilienceConfiguration(**config), bus=bus)
    return chaos.client(url, middlewares=[mw], bus=bus, timeout=0.25)


def test_scenario_library_has_at_least_12_documented_scenarios() -> None:
    assert len(SCENARIOS) >= 12
    for s in SCENARIOS.values():
        assert s.description and s.expect and s.duration > 0 and (list(s.faults()) or s.steps[0].resources)


# ---------------------------------------------------------------------- breaker and fallback
def breaker_call_site(chaos: Harness, name: str) -> tuple[Any, EventBus, list[tuple[float, str]]]:
    server = chaos.server()
    proxy = chaos.proxy(server)
    client = chaos.client(proxy.url, timeout=1.0)
    bus = EventBus()
    states: list[tuple[float, str]] = []
    bus.subscribe(lambda e: states.append((time.monotonic(), e.attrs["new"])), prefix="breaker.state")

    @resilient(name=name, retry=None, fallback=FallbackConfig(default=FALLBACK), bus=bus)
    def lookup(i: int) -> bytes:
        return client.request(b"item-%d" % i, fid=1).body

    return (proxy, lookup), bus, states


def test_error_storm_opens_the_breaker_and_the_fallback_serves(chaos: Harness) -> None:
    (proxy, lookup), _, states = breaker_call_site(chaos, "storm")
    run = chaos.run("error-storm", proxy, lookup, probe=lambda: lookup(0) != FALLBACK)
    during = run.during()
    assert all(c.ok for c in run.calls), run.errors()  # the fallback answers every failure
    assert sum(c.value == FALLBACK for c in during) > len(during) / 2  # 80% errors, then open: mostly fallback
    opened = [t for t, s in states if s == "open"]
    assert opened and run.fault_start <= opened[0] <= run.fault_end, states
    assert proxy.errors_injected > 0
    # While open, calls are rejected without reaching the wire: fewer requests than calls.
    assert proxy.requests_seen < len(run.calls) + 1
    assert_recovered(run)
    assert [lookup(i) for i in range(3)] == [b"item-%d" % i for i in range(3)]  # the trial calls close it
    assert states[-1][1] == "closed", states


def test_flapping_opens_and_closes_the_breaker_again(chaos: Harness) -> None:
    (proxy, lookup), _, states = breaker_call_site(chaos, "flapping")
    run = chaos.run("flapping", proxy, lookup, probe=lambda: lookup(0) != FALLBACK)
    assert all(c.ok for c in run.calls), run.errors()
    assert proxy.refusals == 1 and proxy.errors_injected > 0
    assert_recovered(run)
    assert [lookup(i) for i in range(3)] == [b"item-%d" % i for i in range(3)]
    names = [s for _, s in states]
    assert names.count("open") >= 1 and names[-1] == "closed", names


# ---------------------------------------------------------------------- retries and the budget
def test_partial_outage_retries_respect_the_budget(chaos: Harness) -> None:
    server = chaos.server()
    proxy = chaos.proxy(server)
    bus = EventBus()
    budget = BudgetConfig(window=10.0, ratio=0.1, min_per_second=1.0)
    client = retrying_client(chaos, proxy.url, bus, budget=budget)
    retries: list[Any] = []
    bus.subscribe(retries.append, prefix="retry.attempt")

    def call(i: int) -> bytes:
        return client.request(b"x-%d" % i, fid=1, idempotent=True).body

    proxy_seen_before = proxy.requests_seen
    run = chaos.run("partial-outage", proxy, call, greenlets=10, pace=0.005)
    logical = len(run.calls) + 1  # + the probe
    attempts = proxy.requests_seen - proxy_seen_before
    resent = attempts - logical
    allowed = budget.ratio * logical + budget.min_per_second * budget.window
    assert proxy.errors_injected > 0 and resent > 0
    assert resent <= allowed, f"{resent} retries for {logical} calls; the budget allows {allowed:.0f}"
    assert resent == len(retries)
    exhausted = [c for c in run.calls if isinstance(c.error, RetryBudgetExhausted)]
    assert exhausted, run.errors()  # the budget bound: 30% failures want more retries than it allows
    assert all(isinstance(c.error, (RetryBudgetExhausted, RemoteError)) for c in run.calls if not c.ok)
    assert_recovered(run)


# ---------------------------------------------------------------------- exactly once
@pytest.mark.parametrize("name", ["lost-responses", "lost-requests", "duplicate-requests"])
def test_idempotent_requests_are_neither_lost_nor_applied_twice(chaos: Harness, name: str) -> None:
    server = chaos.server()
    proxy = chaos.proxy(server)
    client = retrying_client(chaos, proxy.url, EventBus())

    def call(i: int) -> bytes:
        return client.request(b"op-%d" % i, fid=FID_APPLY, idempotent=True).body

    run = chaos.run(name, proxy, call)
    assert run.calls and all(c.ok for c in run.calls), run.errors()  # none lost
    assert all(c.value == b"applied op-%d" % int(c.value.split(b"-")[1]) for c in run.calls)
    ops = {b"op-%d" % int(c.value.split(b"-")[1]) for c in run.calls}
    assert all(chaos.applied[op] == 1 for op in ops), {op: n for op, n in chaos.applied.items() if n != 1}
    if name == "duplicate-requests":
        assert proxy.frames_duplicated > 0
        # Counted at the proxy: the client sent each request once; the duplicates are the proxy's.
        assert all(proxy.count_requests(lambda f, op=op: f.body == op) == 1 for op in ops)
        assert server.replays > 0
    else:
        assert proxy.frames_dropped > 0 and server.replays + proxy.frames_dropped > 0
    assert_recovered(run)


@pytest.mark.parametrize("name", ["connection-drops", "connection-resets"])
def test_non_idempotent_requests_are_never_resent_once_possibly_sent(chaos: Harness, name: str) -> None:
    server = chaos.server()
    proxy = chaos.proxy(server)
    client = retrying_client(chaos, proxy.url, EventBus())

    errors: dict[bytes, BaseException] = {}

    def call(i: int) -> bytes:
        idempotent = i % 2 == 0
        try:
            return client.request(b"op-%d" % i, fid=FID_APPLY, idempotent=idempotent).body
        except Exception as exc:
            errors[b"op-%d" % i] = exc
            raise

    run = chaos.run(name, proxy, call)
    cut = proxy.counters()["closes" if name == "connection-drops" else "resets"]
    assert cut > 0
    failed = [c for c in run.calls if not c.ok]
    assert failed, "some non-idempotent calls must have failed when their link was cut"
    assert all(isinstance(c.error, NexusError) for c in failed), run.errors()
    sent = _sent_per_body(proxy)
    for frame_body, n in sent.items():
        i = int(frame_body.split(b"-")[1])
        if i % 2:  # non-idempotent: sent by the client at most once, so applied at most once
            assert n == 1 and chaos.applied[frame_body] <= 1, (frame_body, n, errors.get(frame_body))
        else:  # idempotent: resent as needed, applied at most once; exactly once when the call succeeded
            expected = {0, 1} if frame_body in errors else {1}
            assert chaos.applied[frame_body] in expected, (
                frame_body,
                chaos.applied[frame_body],
                errors.get(frame_body),
            )
    assert any(n > 1 for body, n in sent.items() if int(body.split(b"-")[1]) % 2 == 0)  # idempotent ones were resent
    assert_recovered(run)


def _sent_per_body(proxy: Any) -> dict[bytes, int]:
    counts: dict[bytes, int] = {}
    for frame in proxy.requests:
        if frame.fid == FID_APPLY:
            counts[frame.body] = counts.get(frame.body, 0) + 1
    return counts


# ---------------------------------------------------------------------- timeouts
@pytest.mark.parametrize("name", ["slow-backend", "blackhole", "stalled-server"])
def test_timeouts_fire_within_their_bound(chaos: Harness, name: str) -> None:
    server = chaos.server()
    proxy = chaos.proxy(server)
    bound = 0.2
    client = chaos.client(proxy.url, timeout=bound)

    def call(i: int) -> bytes:
        return client.request(b"t-%d" % i, fid=1).body

    run = chaos.run(name, proxy, call, greenlets=4, pace=0.05)
    timeouts = [c for c in run.calls if isinstance(c.error, RequestTimeout)]
    assert timeouts, run.errors()
    assert all(isinstance(c.error, RequestTimeout) for c in run.calls if not c.ok), run.errors()
    slowest = max(c.duration for c in timeouts)
    assert slowest <= bound + TIMEOUT_SLACK, f"a {bound} s timeout fired after {slowest:.3f} s"
    assert min(c.duration for c in timeouts) >= bound * 0.95
    assert_recovered(run)


# ---------------------------------------------------------------------- links that die
@pytest.mark.parametrize("name", ["half-open", "service-down"])
def test_client_recovers_from_dead_links_within_5s(chaos: Harness, name: str) -> None:
    server = chaos.server()
    proxy = chaos.proxy(server)
    client = chaos.client(proxy.url, timeout=0.3, heartbeat_interval=0.2, heartbeat_timeout=0.5)

    def call(i: int) -> bytes:
        return client.request(b"l-%d" % i, fid=1).body

    run = chaos.run(name, proxy, call, greenlets=4, pace=0.05)
    during = run.during()
    assert any(not c.ok for c in during)
    assert all(isinstance(c.error, NexusError) for c in run.calls if not c.ok), run.errors()
    assert all(c.duration <= 0.3 + TIMEOUT_SLACK for c in run.calls), max(c.duration for c in run.calls)
    if name == "half-open":
        assert proxy.links_frozen >= 1
    else:
        assert proxy.refusals == 1 and not proxy.down
    assert_recovered(run)


# ---------------------------------------------------------------------- the answers stay right
@pytest.mark.parametrize("name", ["reorder-and-duplicate", "jittery-network", "narrow-pipe"])
def test_every_call_gets_its_own_answer(chaos: Harness, name: str) -> None:
    server = chaos.server()
    proxy = chaos.proxy(server)
    client = chaos.client(proxy.url, timeout=5.0)
    size = 200 if name == "narrow-pipe" else 16

    def call(i: int) -> bytes:
        body = (b"%d:" % i).ljust(size, b".")
        answer = client.request(body, fid=1).body
        assert answer == body
        return answer

    run = chaos.run(name, proxy, call, greenlets=3 if name == "narrow-pipe" else 8)
    assert run.calls and all(c.ok for c in run.calls), run.errors()
    if name == "reorder-and-duplicate":
        assert proxy.frames_reordered > 0 and proxy.frames_duplicated > 0
    elif name == "jittery-network":
        assert sum(c.duration for c in run.during()) / len(run.during()) >= 0.02
    else:
        assert len(run.during()) > 0 and server.protocol_errors == 0
    assert_recovered(run)


def test_push_flood_keeps_the_hub_running_and_the_queue_bounded(chaos: Harness) -> None:
    server = chaos.server()
    proxy = chaos.proxy(server)
    client = chaos.client(proxy.url, timeout=2.0, push_queue_size=200)

    def call(i: int) -> bytes:
        return client.request(b"p-%d" % i, fid=1).body

    run = chaos.run("push-flood", proxy, call, greenlets=2, pace=0.05)
    assert all(c.ok for c in run.calls), run.errors()
    assert proxy.pushes_injected >= 500
    assert client.stats()["pushes_queued"] <= 200 and client.pushes_dropped > 0
    assert_recovered(run)


# ---------------------------------------------------------------------- resources
def test_cpu_saturation_does_not_stall_the_hub(chaos: Harness) -> None:
    server = chaos.server()
    proxy = chaos.proxy(server)
    client = chaos.client(proxy.url, timeout=2.0)

    def call(i: int) -> bytes:
        return client.request(b"c-%d" % i, fid=1).body

    run = chaos.run("cpu-saturation", proxy, call)
    assert all(c.ok for c in run.calls), run.errors()
    (cpu,) = run.scenario.resources
    assert cpu.busy_seconds > 0 and not cpu.active  # it really burnt CPU, and stopped
    assert_recovered(run)  # the fixture asserts the hub never stalled over 50 ms


def test_resource_squeeze_open_connections_keep_working(chaos: Harness) -> None:
    server = chaos.server()
    proxy = chaos.proxy(server)
    client = chaos.client(proxy.url, timeout=2.0, min_size=1)
    client.connect()
    spare: list[int] = []

    def call(i: int) -> bytes:
        spare.append(resource.getrlimit(resource.RLIMIT_NOFILE)[0] - open_fds())
        return client.request(b"r-%d" % i, fid=1).body

    run = chaos.run("resource-squeeze", proxy, call)
    assert all(c.ok for c in run.calls), run.errors()
    assert min(spare) <= 40  # calls ran with about 32 descriptors to spare (and 64 MB held)
    mem, fds = run.scenario.resources
    assert fds.limit > 0 and not fds.active and not mem.active and mem.held_bytes == 0
    assert_recovered(run)
