"""Legacy call sites: plain urllib behind the decorators in a monkey-patched app, and a 1,000-greenlet stress run."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import gevent

from nexus_green.errors import ConnectionLost
from nexus_green.events import EventBus
from nexus_green.resilience import BulkheadConfig, ResilienceConfiguration, Resilient, RetryConfig

LEGACY_APP = textwrap.dedent(
    """
    from gevent import monkey
    monkey.patch_all()

    import json
    import urllib.error
    import urllib.request

    import gevent
    from gevent.pywsgi import WSGIServer

    from nexus_green.errors import CircuitOpen, RequestTimeout
    from nexus_green.events import EventBus
    from nexus_green.resilience import (
        BreakerConfig, BulkheadConfig, FallbackConfig, RetryConfig, TimeoutConfig,
        circuit_breaker, resilient, retry, timeout,
    )

    hits = {"flaky": 0, "broken": 0, "slow": 0}
    active = peak = 0

    def app(environ, start_response):
        global active, peak
        path = environ["PATH_INFO"].strip("/")
        if path in hits:
            hits[path] += 1
        if path == "flaky" and hits["flaky"] <= 2 or path == "broken":
            start_response("503 Service Unavailable", [("Content-Length", "0")])
            return [b""]
        if path == "slow":
            gevent.sleep(5)
        if path == "busy":
            active += 1
            peak = max(peak, active)
            gevent.sleep(0.05)
            active -= 1
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [path.encode()]

    server = WSGIServer(("127.0.0.1", 0), app, log=None, error_log=None)
    server.start()
    base = f"http://127.0.0.1:{server.server_port}/"
    bus = EventBus()

    def get(path, timeout=10):
        try:
            with urllib.request.urlopen(base + path, timeout=timeout) as resp:
                return resp.read().decode()
        except urllib.error.HTTPError as e:
            e.close()
            raise

    @retry(idempotent=True, retry_on=(urllib.error.URLError,), base_delay=0.01, bus=bus)
    def flaky():
        return get("flaky")

    @timeout(0.2)
    def slow():
        return get("slow")

    @circuit_breaker(max_consecutive_failures=2, bus=bus)
    def broken():
        return get("broken")

    @resilient(
        idempotent=True,
        retry=RetryConfig(retry_on=(urllib.error.URLError,), base_delay=0.01),
        bulkhead=BulkheadConfig(name="busy", max_concurrent=10, max_queue=100, wait_timeout=10),
        timeout=TimeoutConfig(request=5.0),
        fallback=FallbackConfig(default="fallback"),
        bus=bus,
    )
    def busy(i):
        return get("busy")

    out = {"flaky": flaky(), "flaky_hits": hits["flaky"]}
    try:
        slow()
    except RequestTimeout:
        out["slow"] = "timed out"
    errors = []
    for _ in range(4):
        try:
            broken()
        except urllib.error.HTTPError as e:
            errors.append(e.code)
        except CircuitOpen:
            errors.append("open")
    out["broken"] = errors
    out["broken_hits"] = hits["broken"]
    greenlets = [gevent.spawn(busy, i) for i in range(30)]
    gevent.joinall(greenlets, timeout=30, raise_error=True)
    out["busy"] = sorted(set(g.value for g in greenlets))
    out["busy_peak"] = peak
    server.stop()
    print(json.dumps(out))
    """
)


def test_decorators_serve_plain_urllib_in_a_patched_app(tmp_path: Path) -> None:
    script = tmp_path / "legacy_app.py"
    script.write_text(LEGACY_APP)
    proc = subprocess.run([sys.executable, "-W", "error", str(script)], capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["flaky"] == "flaky" and out["flaky_hits"] == 3  # two 503s retried
    assert out["slow"] == "timed out"  # the patched socket read was interrupted
    assert out["broken"] == [503, 503, 503, "open"] and out["broken_hits"] == 3
    assert out["busy"] == ["busy"]
    assert 1 < out["busy_peak"] <= 10  # calls overlap, and the bulkhead caps them


def test_a_thousand_greenlets_through_resilient(leakcheck: None) -> None:
    cfg = ResilienceConfiguration(
        name="stress",
        retry=RetryConfig(base_delay=0.0),
        bulkhead=BulkheadConfig(name="stress", max_concurrent=100, max_queue=1000, wait_timeout=None),
    )
    r = Resilient(cfg, bus=EventBus())
    attempts: dict = {}
    active = peak = 0

    def work(i: int) -> int:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        try:
            attempts[i] = attempts.get(i, 0) + 1
            gevent.sleep(0)
            if i % 10 == 0 and attempts[i] == 1:
                raise ConnectionLost(f"call {i} lost")
            gevent.sleep(0)
            return i * 2
        finally:
            active -= 1

    decorated = r.decorate(work, idempotent=True)
    greenlets = [gevent.spawn(decorated, i) for i in range(1000)]
    gevent.joinall(greenlets, timeout=60, raise_error=True)
    results: list[Any] = [g.value for g in greenlets]
    assert results == [i * 2 for i in range(1000)]
    assert sum(attempts.values()) == 1100
    assert peak == 100  # the bulkhead held the limit under load
    assert r.bulkhead is not None and r.bulkhead.active == 0 and r.bulkhead.waiting == 0
    assert r.breaker is not None and r.breaker.current_state == "closed" and r.breaker.figures().calls == 1000
    assert r.budget is not None and r.budget.figures().retries == 100
