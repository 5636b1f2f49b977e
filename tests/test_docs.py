"""Every ```python block in docs/*.md runs, in a fresh interpreter, and exits 0.

A page's blocks run in order in one process, so a later block may use names
an earlier one defined. A block that starts with ``# doc: no-run`` is shown
but not run (for shell-ish fragments).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"
BLOCK = re.compile(r"```python\n(.*?)```", re.S)


def pages() -> list[Path]:
    return sorted(p for p in DOCS.glob("*.md") if BLOCK.search(p.read_text()))


@pytest.mark.parametrize("page", pages(), ids=lambda p: p.name)
def test_doc_examples_run(page: Path, tmp_path: Path) -> None:
    blocks = [b for b in BLOCK.findall(page.read_text()) if not b.startswith("# doc: no-run")]
    script = tmp_path / f"{page.stem}_example.py"
    script.write_text("\n\n".join(blocks))
    proc = subprocess.run(
        [sys.executable, "-W", "error", str(script)],
        capture_output=True,
        text=True,
        timeout=90,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, f"{page.name} example failed:\n{proc.stdout}\n{proc.stderr}"


# --- docs/diagnostics.md: the JSON report it shows validates against docs/diagnostics.schema.json (issue 19)
def test_diagnostics_json_example_validates_against_the_schema() -> None:
    import json

    import jsonschema

    page = (DOCS / "diagnostics.md").read_text()
    examples = re.findall(r"```json\n(.*?)```", page, re.S)
    assert examples, "docs/diagnostics.md shows no JSON report"
    schema = json.loads((DOCS / "diagnostics.schema.json").read_text())
    validator = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())
    for text in examples:
        validator.validate(json.loads(text))


# --- docs/shared-state.md: its example runs against a real redis-server (issue 20) --------------------
def test_shared_state_example_runs_against_a_real_redis_server(redis_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The generic test above exits early without redis-server; this one installs it or skips saying why."""
    page = DOCS / "shared-state.md"
    blocks = [b for b in BLOCK.findall(page.read_text()) if not b.startswith("# doc: no-run")]
    script = tmp_path / "shared_state_example.py"
    script.write_text("\n\n".join(blocks))
    proc = subprocess.run(
        [sys.executable, "-W", "error", str(script)], capture_output=True, text=True, timeout=90, cwd=tmp_path
    )
    assert proc.returncode == 0, f"shared-state.md example failed:\n{proc.stdout}\n{proc.stderr}"
    assert "skipped" not in proc.stdout
    assert "applied once: [b'10 EUR'] replayed by worker b: 1" in proc.stdout
    assert "origin\nl3\nafter the invalidation: origin; origin calls: 2" in proc.stdout
