"""The legacy app of issue 13 through a backend outage (the scenario of ``make demo``).

A monkey-patched pywsgi app calls a real backend process through a Client and
an HTTP dependency through ``requests``, each call site under ``@timed``,
``@cached`` and ``@resilient`` with a fallback default and timeouts (every
other policy at the library's defaults). 50 greenlets load it while the
backend is killed for 4 s and restarted on its port.
"""

from __future__ import annotations

import pytest

from nexus_green.testing.legacy_app import ScenarioResult, run_scenario, story


@pytest.fixture(scope="module")
def run() -> ScenarioResult:
    result = run_scenario(greenlets=50, warmup=3.0, outage=4.0, recovery=12.0)
    print("\n".join(story(result)))
    return result


def test_no_http_500_with_a_fallback(run: ScenarioResult) -> None:
    assert run.samples and set(run.status_counts) == {200}, run.status_counts
    during = [s for s in run.samples if run.killed_at + 1.0 <= s.start <= run.restarted_at]
    assert during and any(s.backend == "fallback" for s in during)
    assert run.sources("backend").get("cache", 0) > 0


def test_every_request_answered_within_its_timeout_plus_100ms(run: ScenarioResult) -> None:
    assert run.slowest <= run.budget + 0.1, f"slowest {run.slowest:.3f}s, budget {run.budget}s"


def test_first_success_within_5s_of_the_restart(run: ScenarioResult) -> None:
    first = run.first_success_after_restart
    assert first is not None and first <= 5.0, first


def test_statsd_shows_the_failures_and_the_recovery(run: ScenarioResult) -> None:
    assert run.statsd_failures > 0 and run.statsd_fallbacks > 0
    assert run.statsd_breaker_transitions.get("open", 0) >= 1
    assert run.statsd_breaker_transitions.get("closed", 0) >= 1
    assert run.statsd_completed_after_restart > 0
    assert run.statsd.get("app.backend", 0) > 0 and run.statsd.get("app.dependency", 0) > 0


def test_health_degraded_during_the_outage_and_healthy_after(run: ScenarioResult) -> None:
    during = run.health_between(run.killed_at, run.restarted_at)
    assert {"degraded", "unhealthy"} & set(during), during
    assert run.final_health == "healthy", run.health[-5:]
