"""Scenarios run their schedule and undo it; HubWatch tells a held hub from a busy machine."""

from __future__ import annotations

import time

import gevent
import pytest

from nexus_green.chaos import SCENARIOS, ChaosScenario, FaultInjector, HubWatch, MemoryPressure, Step, drop, scenario
from nexus_green.chaos.hubwatch import run_queue_wait
from nexus_green.chaos.scenarios import describe_all

pytestmark = pytest.mark.usefixtures("leakcheck")


def test_the_library_is_documented_and_valid() -> None:
    assert len(SCENARIOS) >= 12
    rows = describe_all()
    assert [r["name"] for r in rows] == list(SCENARIOS)
    assert all(r["description"] and r["expect"] and (r["faults"] or r["resources"]) for r in rows)
    assert {f.kind for s in SCENARIOS.values() for f in s.faults()} >= {"error", "drop", "service_down", "half_open"}


def test_a_schedule_adds_and_removes_faults_and_resources_in_order() -> None:
    s = scenario(
        "two-steps",
        "d",
        "e",
        Step(at=0.05, duration=0.05, faults=(drop(seed=1),)),
        Step(at=0.0, duration=0.03, resources=(lambda: MemoryPressure(2),)),
    )
    inj = FaultInjector()
    seen: list[int] = []
    inj.on_change(lambda: seen.append(len(inj.faults())))
    run = s.run(inj)
    assert seen == [1, 0] and inj.faults() == []
    assert len(run.windows) == 2 and run.windows[0][1] <= run.windows[1][0]
    (mem,) = run.resources
    assert not mem.active and mem.held_bytes == 0
    assert run.fault_end is not None and run.fault_end >= run.windows[1][1]
    assert not run.running and "done windows=2" in repr(run)


def test_stop_ends_a_scenario_early_and_undoes_it() -> None:
    inj = FaultInjector()
    long = scenario("long", "d", "e", Step(duration=60.0, faults=(drop(),), resources=(lambda: MemoryPressure(1),)))
    with long.start(inj) as run:
        gevent.sleep(0.05)
        assert run.running and len(inj.faults()) == 1 and "running" in repr(run)
    assert inj.faults() == [] and not run.resources[0].active
    run.stop()  # idempotent
    with pytest.raises(TimeoutError, match="did not finish"):
        long.run(inj, timeout=0.05)
    assert inj.faults() == []


def test_bad_schedules_are_refused() -> None:
    with pytest.raises(ValueError, match="duration > 0"):
        Step(duration=0)
    with pytest.raises(ValueError, match="no steps"):
        ChaosScenario(name="x", description="d", expect="e", steps=())
    with pytest.raises(ValueError, match="factor must be positive"):
        SCENARIOS["blackhole"].scaled(0)


def test_hubwatch_counts_a_blocking_call_and_not_an_idle_hub() -> None:
    with HubWatch(interval=0.005, keep=3) as watch:
        gevent.sleep(0.05)
        quiet = watch.worst_stall
        time.sleep(0.08)  # holds the hub
        gevent.sleep(0.02)
    assert quiet < 0.05 <= watch.worst_stall and watch.worst_lag >= watch.worst_stall
    assert watch.stalls_over(0.05) == 1 and len(watch._stalls) <= 3
    watch.stop()
    assert "worst_stall=" in repr(watch)
    w = run_queue_wait()
    assert w is None or w >= 0
    with pytest.raises(ValueError):
        HubWatch(interval=0)
