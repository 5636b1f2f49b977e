"""The nexus-green command line: serve (in-process and as a real process), demo, percentile."""

from __future__ import annotations

import os
import re
import signal
import sys
from typing import Any

import gevent
import pytest
from gevent import subprocess as gsubprocess

from nexus_green import Client
from nexus_green.cli import main, percentile
from nexus_green.testing import FID_PUSH

pytestmark = pytest.mark.usefixtures("leakcheck")

LISTENING = re.compile(r"^listening on 127\.0\.0\.1:(\d+)$")


# --------------------------------------------------------------------- percentile
@pytest.mark.parametrize(
    "values,q,expected",
    [
        ([], 0.5, 0.0),
        ([7.0], 0.0, 7.0),
        ([7.0], 0.5, 7.0),
        ([7.0], 1.0, 7.0),
        ([1.0, 2.0, 3.0, 4.0], 0.5, 2.0),
        ([1.0, 2.0, 3.0, 4.0], 0.0, 1.0),
        ([1.0, 2.0, 3.0, 4.0], 1.0, 4.0),
        ([float(i) for i in range(1, 101)], 0.5, 50.0),
        ([float(i) for i in range(1, 101)], 0.95, 95.0),
        ([float(i) for i in range(1, 101)], 0.99, 99.0),
        ([float(i) for i in range(1, 101)], 0.999, 100.0),
        ([float(i) for i in range(1, 11)], 0.25, 3.0),  # nearest rank: ceil-ish of 2.5
    ],
)
def test_percentile(values: list[float], q: float, expected: float) -> None:
    assert percentile(values, q) == expected


def test_percentile_clamps_out_of_range_q() -> None:
    assert percentile([1.0, 2.0], -1.0) == 1.0
    assert percentile([1.0, 2.0], 5.0) == 2.0


# --------------------------------------------------------------------- serve, in process
def test_serve_with_duration_prints_the_port_and_exits(capsys: Any) -> None:
    assert main(["serve", "--port", "0", "--duration", "0.5"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1
    m = LISTENING.match(out[0])
    assert m and int(m.group(1)) > 0


def test_serve_serves_until_killed_with_welcome(capsys: Any) -> None:
    runner = gevent.spawn(main, ["serve", "--port", "0", "--welcome", "hi there"])
    line = ""
    with gevent.Timeout(10):
        while not line:
            gevent.sleep(0.01)
            line = capsys.readouterr().out.strip()
    m = LISTENING.match(line)
    assert m, line
    with Client(f"tcp://127.0.0.1:{m.group(1)}", timeout=5) as client:
        client.connect()
        assert next(client.pushes(timeout=5)).body == b"hi there"
        assert client.request(b"ping", fid=1).body == b"ping"
    assert not runner.dead  # duration 0: runs until stopped
    runner.kill(block=True, timeout=5)
    assert runner.dead


def test_serve_refuses_a_bad_port(capsys: Any) -> None:
    with pytest.raises(SystemExit) as info:
        main(["serve", "--port", "not-a-number"])
    assert info.value.code == 2
    assert "invalid int value" in capsys.readouterr().err


def test_a_command_is_required(capsys: Any) -> None:
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2
    assert "required" in capsys.readouterr().err


def test_unknown_command(capsys: Any) -> None:
    with pytest.raises(SystemExit) as info:
        main(["launch"])
    assert info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


# --------------------------------------------------------------------- demo
def test_demo_output(capsys: Any) -> None:
    assert main(["workload", "--requests", "300", "--concurrency", "12", "--size", "16"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert re.match(r"^nexus_green demo against tcp://127\.0\.0\.1:\d+$", lines[0])
    assert "  welcome push: welcome to nexus_green" in lines
    assert re.search(r"^  300 echo requests of 16 bytes from 12 greenlets in \d+\.\d{3}s$", out, re.M)
    assert re.search(r"^  throughput: [\d,]+ req/s over \d+ connection\(s\)$", out, re.M)
    m = re.search(r"^  latency ms: p50 ([\d.]+)  p95 ([\d.]+)  p99 ([\d.]+)  max ([\d.]+)$", out, re.M)
    assert m
    p50, p95, p99, pmax = (float(x) for x in m.groups())
    assert 0 <= p50 <= p95 <= p99 <= pmax
    assert re.search(r"^  a silent function timed out as asked: .+", out, re.M)
    assert "  an error code became RemoteError(code=503)" in lines
    assert re.search(r"^  the connection survived both: delayed reply b'ok' in [\d.]+ ms$", out, re.M)
    assert re.search(r"^  pool: <.+>$", out, re.M)
    assert len(lines) == 9


def test_demo_defaults_parse(capsys: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # The defaults (20000 requests, 50 greenlets, 64 bytes) appear in the output; keep it quick by
    # checking the parser rather than running 20000 requests.
    import nexus_green.cli as cli

    seen: list[Any] = []
    monkeypatch.setattr(cli, "_workload", lambda args: seen.append(args) or 0)
    assert main(["workload"]) == 0
    assert (seen[0].requests, seen[0].concurrency, seen[0].size) == (20000, 50, 64)


# --------------------------------------------------------------------- serve, as a real process
@pytest.mark.parametrize("sig,rc", [(signal.SIGTERM, -signal.SIGTERM), (signal.SIGINT, 0)])
def test_serve_console_script_subprocess(sig: int, rc: int) -> None:
    exe = os.path.join(os.path.dirname(sys.executable), "nexus-green")
    cmd = [exe] if os.path.exists(exe) else [sys.executable, "-m", "nexus_green.cli"]
    proc = gsubprocess.Popen(
        [*cmd, "serve", "--port", "0", "--welcome", "from a process"],
        stdout=gsubprocess.PIPE,
        stderr=gsubprocess.PIPE,
        text=True,
    )
    try:
        with gevent.Timeout(30):
            line = proc.stdout.readline().strip()
        m = LISTENING.match(line)
        assert m, f"unexpected first line {line!r}"
        with Client(f"tcp://127.0.0.1:{m.group(1)}", timeout=5) as client:
            client.connect()
            assert next(client.pushes(timeout=5)).body == b"from a process"
            assert client.request(b"over a process boundary", fid=1).body == b"over a process boundary"
            assert client.request(b"2", fid=FID_PUSH).body == b"pushed"
        assert proc.poll() is None  # still serving
        proc.send_signal(sig)  # SIGINT (Ctrl-C) is a clean stop with exit status 0
        assert proc.wait(timeout=30) == rc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        proc.stdout.close()
        proc.stderr.close()
