"""The legacy-app stack (issue 13's decorated call sites) under chaos scenarios, after ``patch_all()``.

legacy_stack_patched.py runs in a fresh interpreter that patched first (as a
legacy app does); this test runs it, shows its output and adds the recovery
times it measured to this run's summary.
"""

from __future__ import annotations

import re
from pathlib import Path

from conftest import RESULTS

from nexus_green.testing import run_module_patched

MEASURED = re.compile(r"\[chaos\] (?P<scenario>[\w-]+): first success (?P<seconds>[\d.]+) s after the fault ended")
WATCHED = re.compile(
    r"\[chaos\] (?P<test>\S+): <HubWatch .*worst_lag=(?P<lag>[\d.]+)ms worst_stall=(?P<stall>[\d.]+)ms>"
)


def test_legacy_stack_under_chaos_after_patch_all() -> None:
    target = Path(__file__).with_name("legacy_stack_patched.py")
    run = run_module_patched(target, "-o", "addopts=", "-p", "no:cacheprovider", "-q", "-s", timeout=100)
    print(run.stdout)
    assert run.returncode == 0, run.report()
    assert "4 passed" in run.stdout, run.report()
    recoveries = [m.groupdict() for m in MEASURED.finditer(run.stdout)]
    watches = [m.groupdict() for m in WATCHED.finditer(run.stdout)]
    assert [r["scenario"] for r in recoveries] == ["blackhole", "error-storm"] and len(watches) == 2
    for r, w in zip(recoveries, watches, strict=True):
        RESULTS.append(
            {
                "test": f"legacy stack (patched): {w['test']}",
                "scenario": r["scenario"],
                "recovery": float(r["seconds"]),
                "hub_stall": float(w["stall"]) / 1000,
                "hub_lag": float(w["lag"]) / 1000,
            }
        )
