"""The HTTP control API and ``nexus-green chaos``: faults added and removed from outside, errors named."""

from __future__ import annotations

import os
import signal
from typing import Any

import gevent
import pytest
from gevent import socket as gsocket

from nexus_green.chaos import ChaosProxy, ControlServer
from nexus_green.chaos.cli import parse_address
from nexus_green.cli import main
from nexus_green.testing import EmbeddedServer

pytestmark = pytest.mark.usefixtures("leakcheck")


@pytest.fixture
def api() -> Any:
    with EmbeddedServer() as server, ChaosProxy(server) as proxy, ControlServer(proxy) as control:
        yield control


def raw(api: ControlServer, head: bytes) -> tuple[int, Any]:
    import json

    with gsocket.create_connection((api.host, api.port), timeout=5) as sock:
        sock.sendall(head)
        sock.shutdown(gsocket.SHUT_WR)  # the announced body never comes
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    header, _, body = data.partition(b"\r\n\r\n")
    return int(header.split()[1]), json.loads(body)


def test_faults_are_added_listed_and_removed(api: ControlServer) -> None:
    assert api.start() is api and api.url.startswith("http://127.0.0.1:")
    assert api.call("POST", "/faults", {"kind": "drop", "probability": 0.5, "fid": [1, 2]}) == (201, {"id": 1})
    assert api.call("POST", "/faults", {"kind": "latency", "delay": 0.01}) == (201, {"id": 2})
    status, faults = api.call("GET", "/faults")
    assert status == 200 and [f["id"] for f in faults] == [1, 2] and faults[0]["fault"]["fid"] == [1, 2]
    assert api.call("DELETE", "/faults/1") == (200, {"removed": 1})
    assert api.call("DELETE", "/faults/1") == (404, {"error": "no active fault with id 1"})
    assert api.call("DELETE", "/faults") == (200, {"removed": 1})
    assert api.proxy.injector.faults() == []
    status, stats = api.call("GET", "/stats")
    assert status == 200 and stats["requests_seen"] == 0


def test_scenarios_are_listed_and_started(api: ControlServer) -> None:
    status, rows = api.call("GET", "/scenarios")
    assert status == 200 and len(rows) >= 12
    assert api.call("POST", "/scenarios/blackhole?scale=0.05") == (202, {"scenario": "blackhole", "duration": 0.1})
    assert api.proxy.injector.active("blackhole")
    assert api.runs[0].join(timeout=5) and not api.proxy.injector.faults()
    api.call("POST", "/scenarios/blackhole")
    assert api.proxy.injector.active("blackhole")
    api.stop()  # stops the scenario it started
    assert not api.proxy.injector.faults()
    api.stop()


@pytest.mark.parametrize(
    "method, path, body, status, error",
    [
        ("POST", "/faults", {"kind": "nope"}, 400, "unknown fault kind"),
        ("POST", "/faults", {"kind": "drop", "colour": 1}, 400, "unknown fault field(s): colour"),
        ("POST", "/faults", [1], 400, "a fault is a JSON object"),
        ("DELETE", "/faults/x", None, 400, "a fault id is an integer"),
        ("PUT", "/faults", None, 405, "PUT is not allowed"),
        ("GET", "/nothing", None, 404, "no such resource"),
        ("POST", "/scenarios/none", None, 404, "no scenario named 'none'"),
        ("POST", "/scenarios/blackhole?scale=fast", None, 400, "scale must be a number"),
    ],
)
def test_bad_requests_get_a_named_error(
    api: ControlServer, method: str, path: str, body: Any, status: int, error: str
) -> None:
    got_status, got = api.call(method, path, body)
    assert got_status == status and error in got["error"], got


def test_bad_bodies(api: ControlServer) -> None:
    assert raw(api, b"POST /faults HTTP/1.0\r\nContent-Length: 5\r\n\r\n{nope")[1]["error"].startswith(
        "body is not JSON"
    )
    big = b"POST /faults HTTP/1.0\r\nContent-Length: 100000\r\n\r\n"
    assert raw(api, big) == (400, {"error": "body larger than 65536 bytes"})


def test_parse_address() -> None:
    assert parse_address("localhost:80") == ("localhost", 80)
    for bad in ("localhost", ":80", "h:99999", "h:x"):
        with pytest.raises(Exception, match="expected HOST:PORT"):
            parse_address(bad)


def test_chaos_proxy_command_runs_for_a_duration(capsys: Any) -> None:
    with EmbeddedServer() as server:
        argv = ["chaos", "proxy", "--upstream", f"127.0.0.1:{server.port}", "--duration", "0.2"]
        argv += ["--fault", '{"kind": "latency", "delay": 0.01}', "--scenario", "blackhole"]
        assert main(argv) == 0
    out = capsys.readouterr().out
    assert "proxy listening on 127.0.0.1:" in out and "control on http://127.0.0.1:" in out
    assert "fault 1: latency both" in out and "scenario blackhole started" in out and "stopped: <ChaosProxy" in out


def test_chaos_proxy_command_stops_on_sigint(capsys: Any) -> None:
    with EmbeddedServer() as server:
        # The modules main() needs are imported above, so its handler is in place well before this fires.
        timer = gevent.spawn_later(1.0, os.kill, os.getpid(), signal.SIGINT)
        assert main(["chaos", "proxy", "--upstream", f"127.0.0.1:{server.port}", "--listen", "127.0.0.1:0"]) == 0
        timer.join()
    assert "stopped:" in capsys.readouterr().out


def test_chaos_proxy_command_refuses_bad_input(capsys: Any) -> None:
    assert main(["chaos", "proxy", "--upstream", "127.0.0.1:1", "--scenario", "nope"]) == 2
    assert "no scenario named 'nope'" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["chaos", "proxy", "--upstream", "127.0.0.1:1", "--fault", "{bad json"])
    assert "bad --fault" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["chaos", "proxy"])  # --upstream is required


def test_chaos_scenarios_command(capsys: Any) -> None:
    assert main(["chaos", "scenarios"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") >= 12 and "service-down (3 s)" in out
