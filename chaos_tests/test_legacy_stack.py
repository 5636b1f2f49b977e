"""The legacy-app stack (issue 13's decorated call sites) under chaos scenarios, after ``patch_all()``.

legacy_stack_patched.py runs in a fresh interpreter that patched first (as a
legacy app does); this test runs it and shows its output, recovery times included.
"""

from __future__ import annotations

from pathlib import Path

from nexus_green.testing import run_module_patched


def test_legacy_stack_under_chaos_after_patch_all() -> None:
    target = Path(__file__).with_name("legacy_stack_patched.py")
    run = run_module_patched(target, "-o", "addopts=", "-p", "no:cacheprovider", "-q", "-s", timeout=100)
    print(run.stdout)
    assert run.returncode == 0, run.report()
    assert "3 passed, 1 xfailed" in run.stdout, run.report()
