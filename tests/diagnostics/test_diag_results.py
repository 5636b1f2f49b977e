"""The shared result types: what they refuse and how they sum up."""

from __future__ import annotations

import pytest

from nexus_green.diagnostics import CheckResult, Finding


def f(severity: str) -> Finding:
    return Finding(check="x", code="x.y", severity=severity, message="m")  # type: ignore[arg-type]


def test_finding_refuses_an_unknown_severity() -> None:
    with pytest.raises(ValueError, match="severity must be one of"):
        f("fatal")


def test_check_result_refuses_an_unknown_status_and_a_silent_skip() -> None:
    with pytest.raises(ValueError, match="status must be one of"):
        CheckResult(name="x", status="great")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="says why"):
        CheckResult(name="x", status="skipped")


def test_worst_severity() -> None:
    assert CheckResult(name="x", status="ok").worst_severity is None
    assert CheckResult(name="x", status="ok", findings=(f("info"), f("critical"), f("warning"))).worst_severity == (
        "critical"
    )
    d = CheckResult(name="x", status="warning", duration_ms=1.23456, findings=(f("warning"),)).to_dict()
    assert d["duration_ms"] == 1.235 and d["findings"][0] == {
        "check": "x",
        "code": "x.y",
        "severity": "warning",
        "message": "m",
        "recommendation": "",
    }
