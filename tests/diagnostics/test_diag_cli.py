"""``nexus-green diagnose`` through main() and as a real process: outputs, exit codes, argument errors, progress."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import jsonschema
import pytest
from gevent import subprocess

from nexus_green.cli import main
from nexus_green.diagnostics.cli import progress_line
from nexus_green.testing import FID_ECHO, EmbeddedServer, RefusingPort, run_module_patched, scripted_peer

SCHEMA = json.loads((Path(__file__).resolve().parents[2] / "docs" / "diagnostics.schema.json").read_text())
FAST = ["--count", "3", "--interval", "0", "--load-count", "40", "--concurrency", "2", "--timeout", "2"]


def test_json_output_validates_against_the_schema(leakcheck: None, capsys: pytest.CaptureFixture[str]) -> None:
    with EmbeddedServer() as server:
        rc = main(["diagnose", f"127.0.0.1:{server.port}", "--echo-fid", str(FID_ECHO), "--json", *FAST])
    out = capsys.readouterr()
    assert rc == 0 and out.err == ""  # no progress: stderr is not a terminal
    doc = json.loads(out.out)
    jsonschema.Draft202012Validator(SCHEMA, format_checker=jsonschema.FormatChecker()).validate(doc)
    assert doc["connectionHealth"]["status"] == "healthy"
    assert doc["endpoint"] == f"tcp://127.0.0.1:{server.port}"
    assert doc["networkQuality"]["packetLossPct"] == 0.0 and doc["performance"]["messagesPerSecond"] > 0
    assert {c["name"] for c in doc["checks"]} >= {"dns", "tcp", "protocol", "latency", "bandwidth", "memory"}


def test_markdown_to_a_file_and_the_summary_to_stdout(
    leakcheck: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "report.md"
    with EmbeddedServer() as server:
        rc = main(["diagnose", f"127.0.0.1:{server.port}", "--markdown", "--output", str(target), *FAST])
    out = capsys.readouterr().out
    assert rc == 0
    md = target.read_text()
    assert md.startswith(f"# Diagnostics: tcp://127.0.0.1:{server.port}\n") and "**Verdict: HEALTHY**" in md
    assert "| protocol | ok |" in md
    assert out.startswith(f"tcp://127.0.0.1:{server.port}: HEALTHY") and f"report written to {target}" in out


def test_refused_port_exits_2_with_a_report_not_a_traceback(
    leakcheck: None, capsys: pytest.CaptureFixture[str]
) -> None:
    with RefusingPort() as port:
        rc = main(["diagnose", f"127.0.0.1:{port.port}", *FAST])
    out = capsys.readouterr().out
    assert rc == 2
    assert ": UNHEALTHY" in out and "refused the connection" in out and "-> start the server" in out


def test_http_peer_is_named_in_the_summary(leakcheck: None, capsys: pytest.CaptureFixture[str]) -> None:
    def http(sock) -> None:
        while sock.recv(4096):
            sock.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")

    with scripted_peer(http) as peer:
        rc = main(["diagnose", f"127.0.0.1:{peer.port}", *FAST])
    out = capsys.readouterr().out
    assert rc == 2 and "answers in HTTP" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["diagnose", "localhost"], "expected HOST:PORT, got 'localhost'"),
        (["diagnose", "localhost:99999"], "expected HOST:PORT, got 'localhost:99999'"),
        (["diagnose", "::1:80"], "IPv6 host in brackets"),
        (["diagnose", "h:1", "--proxy", "http://p:3128"], "only socks5:// and socks5h:// are supported"),
        (["diagnose", "h:1", "--count", "0"], "must be > 0"),
        (["diagnose", "h:1", "--count", "many"], "expected a int"),
        (["diagnose", "h:1", "--interval", "-1"], "must be >= 0"),
        (["diagnose", "h:1", "--interval", "soon"], "expected seconds"),
        (["diagnose", "h:1", "--json", "--markdown"], "not allowed with argument"),
        (["diagnose", "h:1", "--skip", "everything"], "invalid choice"),
        (["diagnose", "h:1", "--tls", "--cafile", "/no/such/ca.pem"], "no such file: '/no/such/ca.pem'"),
    ],
)
def test_bad_command_lines_are_argparse_errors(argv, message, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_progress_is_drawn_only_on_a_terminal(
    leakcheck: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    term = Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    with RefusingPort() as port:
        main(["diagnose", f"127.0.0.1:{port.port}", *FAST])
    drawn = term.getvalue()
    assert "\r\x1b[K[1/10] interfaces ..." in drawn and "[4/10] tcp ..." in drawn
    assert drawn.endswith("\r\x1b[K")  # the line is cleared before the report is printed
    buf = io.StringIO()
    show = progress_line(buf)
    show("dns", 1, 3)
    assert buf.getvalue() == "\r\x1b[K[2/3] dns ..."


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "nexus_green.cli", "diagnose", *args],
        capture_output=True,
        text=True,
        timeout=90,
    )


def test_real_process_exit_codes(leakcheck: None) -> None:
    with EmbeddedServer() as server:
        ok = run_cli(f"127.0.0.1:{server.port}", *FAST)
    assert ok.returncode == 0, ok.stderr
    assert f"tcp://127.0.0.1:{server.port}: HEALTHY" in ok.stdout and "speaks nexuskit" in ok.stdout
    with RefusingPort() as port:
        bad = run_cli(f"127.0.0.1:{port.port}", "--json", *FAST)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert json.loads(bad.stdout)["connectionHealth"]["status"] == "unhealthy"
    usage = run_cli("nowhere")
    assert usage.returncode == 2 and "expected HOST:PORT" in usage.stderr and "Traceback" not in usage.stderr


def test_module_passes_under_patch_all() -> None:
    run = run_module_patched(__file__)
    assert run.returncode == 0, run.report()
