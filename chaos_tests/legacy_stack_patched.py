"""The legacy app's call sites under chaos, in a process that called ``gevent.monkey.patch_all()``.

Run by test_legacy_stack.py through ``run_module_patched`` (this file has no
``test_`` prefix, so ``make chaos`` does not collect it unpatched). The app of
nexus_green.testing.legacy_app (``make_app``: ``@timed``, ``@cached`` and
``@resilient`` with a fallback and timeouts around a Client call and a
``requests`` call) is called in-process; its backend is an EmbeddedServer
behind a ChaosProxy that runs a scenario, its HTTP dependency a pywsgi server.
"""

from __future__ import annotations

import gc
import itertools
import os
import time
from typing import Any

import gevent
import pytest
import requests  # noqa: F401  # imported at start, as an app does: a first import inside a test holds the hub
from gevent import monkey
from gevent.pywsgi import WSGIServer

from nexus_green.testing.legacy_app import dependency_app, make_app

REQUEST_TIMEOUT = 0.4


def call_sites(app: Any) -> list[Any]:
    """The app's ``@cached`` call sites (from its closure): their ``.cache`` holds an L2 on disk."""
    cells = dict(zip(app.__code__.co_freevars, (c.cell_contents for c in app.__closure__ or ()), strict=True))
    return [cells["backend_lookup"], cells["dependency_rate"]]


def close_app(app: Any, close: Any) -> None:
    close()  # closes the app's client and its two @cached L2 disk caches


def test_the_process_is_patched() -> None:
    assert monkey.is_module_patched("socket") and monkey.is_module_patched("time")


@pytest.mark.parametrize("name", ["blackhole", "error-storm"])
def test_legacy_call_sites_serve_fallbacks_and_recover(chaos: Any, name: str) -> None:
    server = chaos.server()
    proxy = chaos.proxy(server)
    dependency = WSGIServer(("127.0.0.1", 0), dependency_app, log=None)
    dependency.start()
    chaos._closers.append(dependency.stop)
    app, close = make_app(proxy.url, f"http://127.0.0.1:{dependency.server_port}", request_timeout=REQUEST_TIMEOUT)
    chaos._closers.append(lambda: close_app(app, close))
    probes = itertools.count()

    def get(path: str) -> tuple[str, dict[str, str]]:
        seen: dict[str, Any] = {}

        def start_response(status: str, headers: list[tuple[str, str]]) -> None:
            seen["status"], seen["headers"] = status, dict(headers)

        b"".join(app({"REQUEST_METHOD": "GET", "PATH_INFO": path}, start_response))
        return seen["status"], seen["headers"]

    def call(i: int) -> tuple[str, dict[str, str]]:
        return get(f"/order/item{i % 40}")

    def probe() -> bool:
        status, headers = get(f"/order/probe{next(probes)}")
        return headers.get("X-Backend") == "live"

    run = chaos.run(name, proxy, call, greenlets=10, pace=0.02, probe=probe)
    assert run.calls and all(c.ok and c.value[0] == "200 OK" for c in run.calls), run.errors()
    budget = 2 * REQUEST_TIMEOUT + 0.1  # backend and dependency, each within its timeout
    slowest = max(c.duration for c in run.calls)
    assert slowest <= budget, f"an answer took {slowest:.3f} s; the budget is {budget:.1f} s"
    sources = [c.value[1]["X-Backend"] for c in run.during()]
    assert "fallback" in sources, sources[:20]
    assert run.recovery is not None and run.recovery <= 5.0, run.recovery
    late = [c.value[1]["X-Backend"] for c in run.calls if c.start > run.fault_end + 5.0]
    assert "fallback" not in late
    gevent.sleep(0)
    assert time.monotonic() > run.fault_end


def test_make_app_close_releases_its_disk_caches() -> None:
    before = len(os.listdir("/proc/self/fd"))
    app, close = make_app("tcp://127.0.0.1:1", "http://127.0.0.1:1", request_timeout=0.05)
    for site in call_sites(app):
        site.cache.get("warm-up")  # opens the L2
    close()
    gc.collect()
    after = len(os.listdir("/proc/self/fd"))
    assert after <= before
