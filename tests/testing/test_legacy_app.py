"""nexus_green.testing.legacy_app, short: the demo's scenario end to end in a few seconds (timings are
asserted in chaos_tests/test_legacy_app.py, not here), its story, and the helpers on their own."""

from __future__ import annotations

from typing import Any

import pytest

from nexus_green.cli import main
from nexus_green.testing.legacy_app import StatsDListener, dependency_app, family, http_get, make_app


def test_demo_short_run_tells_the_story(capsys: Any) -> None:
    assert main(["demo", "--greenlets", "10", "--warmup", "1", "--outage", "1.5", "--recovery", "8"]) == 0
    out = capsys.readouterr().out
    assert "nexus_green legacy app demo: 10 greenlets" in out
    assert "HTTP status {200:" in out and "fallback" in out
    assert "breaker backend: closed -> open" in out
    assert "StatsD received" in out and "calls.failed" in out


def test_helpers() -> None:
    import gevent
    from gevent.pywsgi import WSGIServer

    assert family("legacy.breaker.transitions.breaker_db.to_open:1|c") == "breaker.transitions"
    listener = StatsDListener()
    try:
        from gevent import socket

        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        host, port = listener.address.split(":")
        s.sendto(b"legacy.requests.completed:3|c\nlegacy.hub.lag.worst:1|g", (host, int(port)))
        s.close()
        with gevent.Timeout(5):
            while len(listener.lines) < 2:
                gevent.sleep(0.01)
        assert listener.families() == {"hub.lag.worst": 1, "requests.completed": 1}
        assert listener.total("requests.completed") == 3.0
    finally:
        listener.close()
    # This process is not patched, so requests cannot reach a server on this hub: point both at refused ports.
    assert dependency_app({"PATH_INFO": "/rate/ab"}, lambda *a: None) == [b'{"item": "ab", "rate": 3.0}']
    app, close = make_app("tcp://127.0.0.1:1", "http://127.0.0.1:1", request_timeout=0.2)
    server = WSGIServer(("127.0.0.1", 0), app, log=None, error_log=None)
    server.start()
    try:
        status, headers, _ = http_get(server.server_port, "/order/x", timeout=5)
        assert (status, headers["x-backend"], headers["x-dependency"]) == (200, "fallback", "fallback")
        assert http_get(server.server_port, "/health", timeout=5)[2] == b'{"status": "unknown", "reasons": []}'
        assert http_get(server.server_port, "/nothing", timeout=5)[0] == 404
    finally:
        server.stop()
        close()


@pytest.mark.parametrize("line", ["hello", ""])
def test_unexpected_child_output_is_an_error(line: str) -> None:
    import sys

    from nexus_green.testing.legacy_app import _Child

    with pytest.raises(RuntimeError, match="unexpected first line"):
        _Child([sys.executable, "-c", f"print({line!r})"])
