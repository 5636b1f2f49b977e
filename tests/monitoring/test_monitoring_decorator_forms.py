"""Issue 13, item 5, for the measuring decorators: @timed and @counted bare and called (DESIGN principle 10)."""

from __future__ import annotations

import pytest

from nexus_green.clock import FakeClock
from nexus_green.monitoring.decorators import counted, metric_name_for, timed
from nexus_green.monitoring.registry import MetricsRegistry, default_registry
from nexus_green.testing import run_module_patched


def fetch_order(n: int) -> int:
    if n < 0:
        raise KeyError(n)
    return n


def test_bare_timed_and_counted_name_their_metrics_after_the_function() -> None:
    timed_fetch = timed(fetch_order)
    counted_fetch = counted(fetch_order)
    assert timed_fetch(1) == 1 and counted_fetch(2) == 2
    with pytest.raises(KeyError):
        counted_fetch(-1)
    name = metric_name_for(fetch_order)
    assert name == "tests.monitoring.test_monitoring_decorator_forms.fetch_order" or name.endswith(
        "test_monitoring_decorator_forms.fetch_order"
    )
    assert default_registry.histogram(name).count >= 1
    assert default_registry.counter(name + ".calls").value >= 2
    assert default_registry.counter(name + ".calls.errors", {"class": "KeyError"}).value >= 1
    assert timed_fetch.__name__ == counted_fetch.__name__ == "fetch_order"


def test_called_without_a_name_uses_the_function_name_on_the_given_registry() -> None:
    reg, clock = MetricsRegistry(), FakeClock()

    class Repo:
        @timed(registry=reg, clock=clock)
        @counted(registry=reg)
        def load(self) -> str:
            clock.advance(0.5)
            return "rows"

    assert Repo().load() == "rows"
    name = metric_name_for(Repo.load)
    assert name.endswith("repo.load")
    assert reg.histogram(name).sketch.max == 0.5 and reg.counter(name + ".calls").value == 1


def test_named_forms_and_context_managers_still_work() -> None:
    reg, clock = MetricsRegistry(), FakeClock()
    with timed("block", registry=reg, clock=clock):
        clock.advance(1.0)
    with counted("blocks", registry=reg):
        pass
    assert reg.histogram("block").count == 1 and reg.counter("blocks").value == 1


def test_a_nameless_context_manager_says_what_to_pass() -> None:
    with pytest.raises(TypeError, match=r'with timed\("db.block"\)'):
        with timed(registry=MetricsRegistry()):
            pass
    with pytest.raises(TypeError, match=r'with counted\("db.block"\)'):
        with counted(registry=MetricsRegistry()):
            pass


def test_metric_names_from_awkward_functions_are_valid() -> None:
    odd = lambda: None  # noqa: E731
    odd.__module__, odd.__qualname__ = "__main__", "<lambda>"
    assert metric_name_for(odd) == "main.lambda"
    odd.__module__, odd.__qualname__ = "", "9lives"
    assert metric_name_for(odd) == "fn_9lives"
    odd.__qualname__ = "<>"
    assert metric_name_for(odd) == "call"


def test_module_passes_under_patch_all() -> None:
    run = run_module_patched(__file__)
    assert run.returncode == 0, run.report()
