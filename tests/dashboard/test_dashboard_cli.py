"""``nexus-green dashboard`` through the real entry point, and the demo workload's breaker cycle."""

from __future__ import annotations

import json
from typing import Any

import gevent
import pytest

from nexus_green.cli import main
from nexus_green.dashboard.cli import FALLBACK, DemoWorkload


def test_the_command_serves_then_stops(capsys: Any, http: Any) -> None:
    seen: dict[str, Any] = {}

    def probe() -> None:
        # Waits for the URL the command prints, then asks the running dashboard.
        with gevent.Timeout(20, AssertionError("no URL printed")):
            while "dashboard on" not in (out := capsys.readouterr().out + seen.get("out", "")):
                seen["out"] = out
                gevent.sleep(0.05)
        seen["out"] = out
        port = int(out.split("dashboard on http://127.0.0.1:", 1)[1].split("/", 1)[0])
        seen["health"] = http(port, "/health?token=t0k")[0]
        seen["unauthorised"] = http(port, "/health")[0]

    g = gevent.spawn(probe)
    argv = ["dashboard", "--port", "0", "--token", "t0k", "--duration", "3", "--greenlets", "2", "--fault-every", "0"]
    assert main(argv) == 0
    g.get(timeout=5)
    out = seen["out"] + capsys.readouterr().out
    assert "?token=t0k (a demo workload against tcp://127.0.0.1:" in out and "requests;" in out
    assert seen["health"] in (200, 503) and seen["unauthorised"] == 401


def test_the_workload_opens_and_closes_its_breaker(leakcheck: None, http: Any) -> None:
    with DemoWorkload(greenlets=2, fault_every=2.0, fault_for=1.0, interval=1.0) as demo:
        assert demo.dashboard is not None and demo.wait_for_requests(50, timeout=10)
        opened = closed_after = False
        with gevent.Timeout(20, AssertionError("the breaker never opened and closed again")):
            while not closed_after:
                state = demo.inventory.resilient.breaker.current_state
                opened = opened or state == "open"
                closed_after = opened and state == "closed"
                gevent.sleep(0.05)
        assert demo.fallbacks > 0 and demo.calls > demo.fallbacks
        body = json.loads(http(demo.dashboard.port, "/api/view")[2])["events"][0]["data"]
        assert body["resilience"]["breakers"][0]["name"] == "inventory" and body["resilience"]["fallbacks"] > 0
    assert FALLBACK.startswith(b"fallback")


def test_the_workload_waits_in_bounds() -> None:
    with DemoWorkload(greenlets=1, fault_every=0) as demo:
        demo.fail(True)
        assert demo.failing and demo.wait_for_requests(10**9, timeout=0.2) is False
    assert demo._stop.is_set() and all(w.dead for w in demo._workers)


@pytest.mark.parametrize("argv", [["dashboard", "--interval", "0.5", "--duration", "1"]])
def test_a_bad_interval_is_refused(argv: list[str]) -> None:
    from nexus_green.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="push interval"):
        main(argv)
