"""docs/monitoring.md stays true: every metric is listed, and the export example output is current."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from nexus_green.events import EventBus
from nexus_green.monitoring.monitor import PerformanceMonitor

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "monitoring.md"


def test_every_metric_name_is_documented_with_its_unit() -> None:
    text = DOC.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    documented = {}
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        for name in re.findall(r"`([a-z0-9_.]+)`", cells[0]):
            documented[name] = cells
    with PerformanceMonitor(EventBus()) as mon:
        for name, kind, unit, _help in mon.registry.describe():
            assert name in documented, f"{name} is not documented in docs/monitoring.md"
            cells = documented[name]
            assert cells[1] == kind and cells[2] == unit, f"{name}: documented as {cells[1:3]}, is {kind} {unit}"


def test_export_example_output_matches_the_page() -> None:
    proc = subprocess.run(
        [sys.executable, "-W", "error", str(ROOT / "docs" / "examples" / "monitoring_export.py")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    sections = re.split(r"^=== (JSON|Prometheus|CSV|StatsD) ===\n", proc.stdout, flags=re.M)[1:]
    text = DOC.read_text()
    for title, body in zip(sections[::2], sections[1::2], strict=True):
        assert body.rstrip("\n") + "\n```" in text, f"the {title} output in docs/monitoring.md is stale"
