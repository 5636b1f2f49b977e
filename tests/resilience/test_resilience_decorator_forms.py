"""Issue 13, item 5: the twelve public decorators, bare and called (DESIGN principle 10).

Each decorator in ``nexus_green.__all__`` works as ``@name`` and as ``@name(...)``, or refuses bare use at
decoration with a TypeError that says what to pass; unknown options list the valid names; names users bring
from pybreaker and tenacity are accepted or pointed to ours. One test goes through a real Client.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest

import nexus_green
from nexus_green import Client
from nexus_green.clock import FakeClock
from nexus_green.decorating import UnknownOption
from nexus_green.errors import ConfigurationError
from nexus_green.events import EventBus
from nexus_green.monitoring.registry import MetricsRegistry
from nexus_green.resilience import CircuitBreaker, FallbackConfig
from nexus_green.testing import FID_ECHO, EmbeddedServer, run_module_patched

# name -> (options for the called form, the TypeError a bare use raises (None: bare works))
FORMS: dict[str, tuple[dict[str, Any], str | None]] = {
    "circuit_breaker": ({"max_consecutive_failures": 3}, None),
    "retry": ({"max_attempts": 2}, None),
    "timeout": ({}, None),
    "bulkhead": ({"max_concurrent": 2}, None),
    "fallback": ({"default": "d"}, r"@fallback needs options.*write @fallback\(default=\.\.\.\)"),
    "resilient": ({"retry": None}, None),
    "failover": ({"endpoints": ["a", "b"]}, r"@failover needs options.*@failover\(\[\"primary\", \"replica\"\]\)"),
    "hedge": ({"delay": 0.5}, None),
    "timed": ({"registry": MetricsRegistry()}, None),
    "counted": ({"registry": MetricsRegistry()}, None),
    "cached": ({"l2": None}, None),
    "rate_limited": ({}, None),
}

# cached and rate_limited live in middleware/, which another part of issue 13 owns: recorded, not hidden.
NOT_YET: dict[str, str] = {}  # every public decorator works bare (or refuses, saying what to pass)

PUBLIC_DECORATORS = sorted(FORMS)


def test_the_twelve_are_the_public_decorators() -> None:
    assert len(FORMS) == 12
    assert set(FORMS) <= set(nexus_green.__all__)


def _target(name: str) -> Callable[..., Any]:
    if name == "failover":

        def read(key: str = "k", *, endpoint: str) -> str:
            return f"{key}@{endpoint}"

        return read

    def work(x: int = 1) -> int:
        return x * 2

    return work


def _call(name: str, fn: Callable[..., Any]) -> Any:
    return fn() if name == "failover" else fn(21)


def _marks(name: str) -> Any:
    if name in NOT_YET:
        return pytest.param(name, marks=pytest.mark.xfail(reason=NOT_YET[name], strict=True))
    return name


@pytest.mark.parametrize("name", [_marks(n) for n in PUBLIC_DECORATORS])
def test_bare_form(name: str) -> None:
    decorator = getattr(nexus_green, name)
    _, refused = FORMS[name]
    if refused is not None:
        with pytest.raises(TypeError, match=refused):
            decorator(_target(name))
        return
    wrapped = decorator(_target(name))
    assert callable(wrapped) and wrapped.__name__ == _target(name).__name__
    assert _call(name, wrapped) == _call(name, _target(name))


@pytest.mark.parametrize("name", PUBLIC_DECORATORS)
def test_called_form(name: str) -> None:
    decorator = getattr(nexus_green, name)
    options, _ = FORMS[name]
    if name == "failover":
        wrapped = decorator(options["endpoints"])(_target(name))
        assert wrapped() == "k@a"
        return
    wrapped = decorator(**options)(_target(name))
    assert wrapped.__name__ == "work" and wrapped(21) == 42


UNKNOWN_OPTION_FORMS = ["circuit_breaker", "retry", "bulkhead", "fallback", "resilient", "failover", "hedge"]


@pytest.mark.parametrize("name", UNKNOWN_OPTION_FORMS)
def test_unknown_options_list_the_valid_names(name: str) -> None:
    decorator = getattr(nexus_green, name)
    options = dict(FORMS[name][0], colour="red")
    with pytest.raises(UnknownOption, match=r"colour.*valid options: .*") as info:
        if name == "failover":
            decorator(options.pop("endpoints"), **options)
        else:
            decorator(**options)(_target(name))
    assert isinstance(info.value, TypeError) and isinstance(info.value, ConfigurationError)
    valid = re.search(r"valid options: (.*)$", str(info.value))
    assert valid is not None
    assert set(FORMS[name][0]) - {"endpoints"} <= set(valid.group(1).split(", "))


@pytest.mark.parametrize(
    "option, points_to",
    [
        ("stop", "max_attempts"),
        ("wait", "base_delay"),
        ("retry", "retry_on"),
        ("reraise", "raised as itself"),
        ("tries", "max_attempts"),
    ],
)
def test_tenacity_names_are_pointed_to_ours(option: str, points_to: str) -> None:
    with pytest.raises(TypeError, match=points_to):
        nexus_green.retry(**{option: 3})


def test_pybreaker_names_are_accepted() -> None:
    @nexus_green.circuit_breaker(fail_max=3, reset_timeout=10, success_threshold=2, clock=FakeClock(), bus=EventBus())
    def down() -> None:
        raise ConnectionRefusedError()

    breaker = down.breaker  # type: ignore[attr-defined]
    for _ in range(3):
        with pytest.raises(ConnectionRefusedError):
            down()
    assert breaker.current_state == "open"  # pybreaker's fail_max=3: open on the 3rd failure
    assert breaker.config.max_consecutive_failures == 2 and breaker.config.half_open_successes == 2
    assert breaker.config.reset_timeout == 10 and breaker.config.reset_cap == 10
    with pytest.raises(ConfigurationError, match="not both"):
        CircuitBreaker(fail_max=3, max_consecutive_failures=2)
    with pytest.raises(ConfigurationError, match="fail_max must be"):
        CircuitBreaker(fail_max=0)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: nexus_green.retry(3), r"retry\(\) takes a Retry or keyword options"),
        (lambda: nexus_green.timeout("5s"), r"timeout\(\) takes the limit in seconds"),
        (lambda: nexus_green.timeout(True), r"timeout\(\) takes the limit in seconds"),
        (lambda: nexus_green.bulkhead(3), r"bulkhead\(\) takes a name"),
        (lambda: nexus_green.fallback("x"), r"fallback\(\) takes a Fallback"),
        (lambda: nexus_green.fallback(), r"needs something to fall back to"),
        (lambda: nexus_green.failover(), r"failover\(\) needs the endpoints"),
        (lambda: nexus_green.failover("a"), r"failover\(\) needs the endpoints"),
        (lambda: nexus_green.hedge(2), r"hedge\(\) takes a Hedge"),
        (lambda: nexus_green.resilient("x"), r"resilient\(\) takes a ResilienceConfiguration"),
        (lambda: nexus_green.resilient(fallback="n/a"), r"fallback= takes a FallbackConfig"),
        (lambda: nexus_green.circuit_breaker(5), r"circuit_breaker\(\) takes a CircuitBreaker"),
        (lambda: nexus_green.circuit_breaker(CircuitBreaker(), name="x"), r"takes no options"),
        (lambda: nexus_green.timed(3), r"timed\(\) takes a metric name"),
        (lambda: nexus_green.counted(3), r"counted\(\) takes a metric name"),
        (lambda: nexus_green.timed(len, registry=MetricsRegistry()), r"not a form"),
        (lambda: nexus_green.counted(len, registry=MetricsRegistry()), r"not a form"),
    ],
)
def test_wrong_forms_are_type_errors_that_say_what_to_pass(call: Callable[[], Any], message: str) -> None:
    with pytest.raises(TypeError, match=message):
        call()


def test_decorators_are_usable_bare_on_a_real_client_call() -> None:
    registry = MetricsRegistry()
    with EmbeddedServer() as server, Client(server.url, heartbeat_interval=None) as client:

        @nexus_green.resilient
        @nexus_green.retry
        @nexus_green.circuit_breaker
        @nexus_green.timeout
        @nexus_green.bulkhead
        @nexus_green.hedge
        @nexus_green.timed(registry=registry)
        @nexus_green.counted(registry=registry)
        def echo(body: bytes) -> bytes:
            return client.request(body, FID_ECHO, timeout=5).body

        @nexus_green.fallback(default=b"fallback")
        @nexus_green.failover(["one", "two"])
        def via(body: bytes, *, endpoint: str) -> bytes:
            return client.request(body + endpoint.encode(), FID_ECHO, timeout=5).body

        assert [echo(b"x%d" % i) for i in range(3)] == [b"x0", b"x1", b"x2"]
        assert via(b"@") == b"@one"
    name = "tests.resilience.test_resilience_decorator_forms.test_decorators_are_usable_bare_on_a_real_client_call.locals.echo"
    assert registry.histogram(name).count == 3  # @timed(registry=...) without a name: named after the function
    assert registry.counter(name + ".calls").value == 3  # @counted likewise, plus ".calls"


def test_resilient_bare_uses_its_defaults() -> None:
    @nexus_green.resilient
    def ok() -> str:
        return "ok"

    runner = ok.resilient  # type: ignore[attr-defined]
    assert ok() == "ok" and runner.breaker is not None and runner.retry is not None and runner.fallback is None
    assert runner.breaker.config.reset_timeout == 1.0 and runner.breaker.config.reset_cap == 3.0
    assert FallbackConfig(default=1).on is None


def test_module_passes_under_patch_all() -> None:
    run = run_module_patched(__file__)
    assert run.returncode == 0, run.report()
