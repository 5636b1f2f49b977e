"""The waterfall in a real browser (headless chromium via selenium): bars laid out as the spans' times say.

The screenshot goes to a temporary file; NEXUS_GREEN_UPDATE_SCREENSHOT=1
refreshes docs/tracing.png, which docs/tracing.md shows.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nexus_green.cli import main
from nexus_green.tracing.viewer import load_otlp

DOCS = Path(__file__).resolve().parents[2] / "docs"

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def browser(headless_chromium: Any) -> Iterator[Any]:
    with headless_chromium("1300,900") as driver:
        yield driver


def test_waterfall_renders_in_chromium(browser: Any, trace_file: Path, tmp_path: Path) -> None:
    page = tmp_path / "trace.html"
    assert main(["trace", "view", str(trace_file), "-o", str(page)]) == 0
    browser.get(page.as_uri())
    rows = browser.execute_script(
        """
        return Array.from(document.querySelectorAll('.row')).map((row) => {
            const track = row.querySelector('.track').getBoundingClientRect();
            const bar = row.querySelector('.bar').getBoundingClientRect();
            return {name: row.querySelector('.label').textContent, left: (bar.left - track.left) / track.width,
                    width: bar.width / track.width};
        });
        """
    )
    spans = load_otlp(str(trace_file))
    assert len(rows) == len(spans)
    t0 = min(s["start_ns"] for s in spans)
    total = max(s["end_ns"] for s in spans) - t0
    # Each drawn bar sits where its span's start and duration put it on the trace's axis (within 1%).
    by_name: dict[str, list[dict[str, Any]]] = {}
    for s in spans:
        by_name.setdefault(s["name"], []).append(s)
    root = rows[0]
    assert root["name"] == "checkout" and root["left"] == pytest.approx(0, abs=0.01)
    assert root["width"] == pytest.approx(by_name["checkout"][0]["duration_ns"] / total, abs=0.01)
    lefts = sorted(r["left"] for r in rows if r["name"] == "nexus.request")
    expected = sorted((s["start_ns"] - t0) / total for s in by_name["nexus.request"])
    assert lefts == pytest.approx(expected, abs=0.01)
    shot = DOCS / "tracing.png" if os.environ.get("NEXUS_GREEN_UPDATE_SCREENSHOT") else tmp_path / "tracing.png"
    assert browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000
