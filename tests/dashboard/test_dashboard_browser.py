"""A real browser on the dashboard: headless Debian chromium, driven by selenium, against a running demo workload.

``nexus-green dashboard`` runs in a child process (a Client's real traffic, a
breaker that the workload opens); the test loads the page and checks that the
numbers and charts change from the stream, that they match the JSON the
server gives for the same event, that the open breaker shows as open, that
the page says which stream it uses (SSE, WebSocket, polling), and saves the
screenshot docs/dashboard.md shows.

``make test`` installs chromium and chromium-driver first (the ``browser``
target); when they are missing here too, the test installs them, and skips
(saying why) only where that is impossible.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gevent
import pytest
from gevent import subprocess as gsubprocess

DOCS = Path(__file__).resolve().parents[2] / "docs"

# Installing chromium (when make test's browser target did not) can take minutes: longer than the suite's 120 s.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(1200)]


@pytest.fixture(scope="module")
def demo() -> Iterator[str]:
    """``nexus-green dashboard`` on port 0 with its demo workload; yields the page's URL."""
    argv = [sys.executable, "-m", "nexus_green.cli", "dashboard", "--port", "0", "--fault-every", "8"]
    argv += ["--fault-for", "5", "--duration", "110", "--greenlets", "4"]
    proc = gsubprocess.Popen(argv, stdout=gsubprocess.PIPE, stdin=gsubprocess.DEVNULL)
    try:
        with gevent.Timeout(30, AssertionError("nexus-green dashboard did not say where it listens")):
            line = proc.stdout.readline().decode()
        assert line.startswith("dashboard on http://127.0.0.1:"), line
        yield line.split()[2]
    finally:
        proc.send_signal(signal.SIGINT)  # a clean stop, so coverage of the child is saved
        try:
            proc.wait(timeout=15)
        except gsubprocess.TimeoutExpired:  # pragma: no cover - it did not stop
            proc.kill()
            proc.wait()
        proc.stdout.close()


@pytest.fixture(scope="module")
def browser(headless_chromium: Any) -> Iterator[Any]:
    with headless_chromium("1400,1700") as driver:
        yield driver


def _wait(driver: Any, script: str, what: str, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = driver.execute_script(script)
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"the page never showed {what} in {timeout}s; it shows: {_read(driver)}")


def _read(driver: Any) -> dict[str, Any]:
    # One call, so every figure comes from the same rendered event.
    result: dict[str, Any] = driver.execute_script(
        """
        const t = (id) => document.getElementById(id).textContent;
        const thr = document.getElementById('chart-throughput');
        return {seq: t('seq'), transport: t('transport'), requests: t('ov-requests'), active: t('ov-active'),
                messages: t('ov-messages'), latency: t('ov-latency'), errors: t('ov-errors'), health: t('h-status'),
                fds: t('h-fds'), points: Number(thr.dataset.points), bars: Number(document.getElementById('chart-latency').dataset.bars),
                pixels: thr.toDataURL(), memory_points: Number(document.getElementById('chart-memory').dataset.points),
                breakers: Array.from(document.querySelectorAll('#breakers tbody tr[data-breaker]')).map(
                    (tr) => [tr.dataset.breaker, tr.querySelector('.state').textContent]),
                rows: document.querySelectorAll('#connections tbody tr').length};
        """
    )
    return result


def _get_json(url: str) -> Any:
    import urllib.request

    with urllib.request.urlopen(url, timeout=10) as r:  # noqa: S310 - loopback
        return json.loads(r.read())


def test_the_page_follows_the_stream(demo: str, browser: Any) -> None:
    browser.get(demo)
    _wait(browser, "return document.getElementById('transport').textContent === 'SSE'", "the SSE stream in use")
    _wait(browser, "return Number(document.getElementById('ov-requests').textContent) > 0", "answered requests")
    before = _read(browser)
    _wait(
        browser,
        f"return Number(document.getElementById('seq').textContent) >= {int(before['seq']) + 3}",
        "three more events",
    )
    after = _read(browser)
    # The numbers and charts changed, from the stream.
    assert int(after["requests"]) > int(before["requests"])
    assert after["points"] > before["points"] >= 1 and after["memory_points"] >= after["points"] - 1
    assert after["pixels"] != before["pixels"]  # the throughput chart was redrawn with new points
    assert after["bars"] >= 1 and after["rows"] == int(after["active"]) >= 1
    assert after["latency"].endswith("ms") and after["errors"].endswith("%") and int(after["fds"]) > 0
    # What the page shows is what the server sent for that event...
    seq = int(after["seq"])
    events = _get_json(f"{demo}api/view?after={seq - 1}")["events"]
    sent = next(e["data"] for e in events if e["id"] == seq)
    assert int(after["requests"]) == sent["overview"]["requests_total"]
    assert int(after["active"]) == sent["overview"]["active_connections"]
    assert after["health"] == sent["health"]["status"]
    # ... and agrees with the monitor's own JSON snapshot taken after it.
    snapshot = _get_json(f"{demo}api/snapshot")
    completed = next(m["value"] for m in snapshot["metrics"] if m["name"] == "requests.completed")
    assert completed >= int(after["requests"])


def test_an_open_breaker_shows_as_open(demo: str, browser: Any, tmp_path: Path) -> None:
    browser.get(demo)
    _wait(
        browser,
        "const s = document.querySelector('#breakers tr[data-breaker=inventory] .state');"
        " return s && s.textContent === 'open';",
        "the inventory breaker open",
        timeout=30,
    )
    shown = _read(browser)
    assert ["inventory", "open"] in shown["breakers"]
    assert int(browser.execute_script("return Number(document.getElementById('r-open').textContent)")) >= 1
    assert int(browser.execute_script("return Number(document.getElementById('r-fallbacks').textContent)")) > 0
    assert browser.execute_script("return document.getElementById('health-badge').textContent") == "degraded"
    _wait(browser, "return Number(document.getElementById('chart-throughput').dataset.points) >= 5", "5 points")
    # The issue asks for the screenshot docs/dashboard.md shows to come from this test: every run
    # refreshes docs/dashboard.png (NEXUS_GREEN_KEEP_SCREENSHOT=1 writes it to a temporary file instead).
    shot = tmp_path / "dashboard.png" if os.environ.get("NEXUS_GREEN_KEEP_SCREENSHOT") else DOCS / "dashboard.png"
    assert browser.save_screenshot(str(shot))
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(("transport", "label"), [("ws", "WebSocket"), ("poll", "polling")])
def test_the_other_transports(demo: str, browser: Any, transport: str, label: str) -> None:
    browser.get(f"{demo}?transport={transport}")
    _wait(browser, f"return document.getElementById('transport').textContent === '{label}'", f"{label} in use")
    _wait(browser, "return Number(document.getElementById('seq').textContent) > 0", "a first event")
    first = int(_read(browser)["seq"])
    _wait(browser, f"return Number(document.getElementById('seq').textContent) >= {first + 2}", "two more events")
    assert _read(browser)["points"] >= 3
