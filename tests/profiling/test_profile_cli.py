"""``nexus-green profile`` both ways, bounded, against an EmbeddedServer: a command in-process, and --target."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from nexus_green.cli import main
from nexus_green.errors import ConnectionRefused
from nexus_green.profiling.cli import CommandError, run_command, run_target, split_command
from nexus_green.testing import EmbeddedServer, run_module_patched, running_patched

SCRIPT = textwrap.dedent(
    """
    import sys, time
    from nexus_green import Client
    from nexus_green.testing import EmbeddedServer

    def hot_loop():
        end = time.perf_counter() + 0.2
        while time.perf_counter() < end:
            pass

    with EmbeddedServer() as server, Client(server.url) as client:
        for _ in range(int(sys.argv[1])):
            client.request(b"p" * 100, fid=1, timeout=5)
    hot_loop()
    print("script done", sys.argv[1:])
    """
)


@pytest.fixture
def script(tmp_path: Path) -> Path:
    path = tmp_path / "app.py"
    path.write_text(SCRIPT)
    return path


def test_command_mode_profiles_a_script(script: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv_before, path_before = sys.argv[:], sys.path[:]
    out_dir = tmp_path / "out"
    code = main(
        [
            "profile",
            "--interval",
            "0.002",
            "--greenlet-names",
            "--output",
            str(out_dir),
            "--",
            sys.executable,
            str(script),
            "30",
        ]
    )
    assert code == 0
    assert sys.argv == argv_before and sys.path == path_before
    out = capsys.readouterr()
    assert "script done ['30']" in out.out
    assert "nexus_green profile:" in out.out and "app.hot_loop" in out.out
    assert "I/O:" in out.out and "wrote" in out.err
    names = sorted(os.listdir(out_dir))
    assert names == ["profile.collapsed", "profile.speedscope.json", "report.json", "report.md", "report.txt"]
    report = json.loads((out_dir / "report.json").read_text())
    assert report["io"]["frames_sent"] >= 30  # the script's Client, on the default bus
    assert any(h["function"] == "app.hot_loop" for h in report["hot_spots"])
    assert "main" in report["greenlets"]  # named: the script runs in the main greenlet


def test_command_mode_module_and_code(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "profmod_example.py").write_text("import sys\nprint('module ran', sys.argv[1:])\n")
    monkeypatch.chdir(tmp_path)
    assert main(["profile", "--format", "markdown", "--", "-m", "profmod_example", "a"]) == 0
    out = capsys.readouterr().out
    assert "module ran ['a']" in out and "# nexus_green profile: profmod_example a" in out
    assert main(["profile", "--format", "json", "--memory", "--", "-c", "x = [bytes(1000) for _ in range(2000)]"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["title"] == "-c x = [bytes(1000) for _ in range(2000)]"
    assert data["allocations"] and data["allocations"][0]["bytes"] >= 1_000_000


def test_command_exit_status_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["profile", "--", "-c", "raise SystemExit(3)"]) == 3
    assert "exited with status 3" in capsys.readouterr().out
    assert main(["profile", "--", "-c", "raise SystemExit('bad input')"]) == 1
    assert "bad input" in capsys.readouterr().err
    assert main(["profile", "--", "-c", "import sys; sys.exit()"]) == 0
    assert main(["profile", "--", "-c", "1 / 0"]) == 1
    assert "ZeroDivisionError" in capsys.readouterr().err
    status, report, sampler = run_command(["-c", "pass\npass"])
    assert status == 0 and report.title == "-c pass..." and not sampler.running
    with pytest.raises(CommandError, match="nothing to profile"):
        main(["profile"])
    with pytest.raises(CommandError, match="no such script"):
        main(["profile", "--", str(tmp_path / "missing.py")])
    with pytest.raises(CommandError, match="needs an argument"):
        split_command(["-m"])
    with pytest.raises(CommandError, match="not both"):
        main(["profile", "--target", "127.0.0.1:1", "--", "-c", "pass"])
    with pytest.raises(SystemExit):
        main(["profile", "--target", "nohostport"])
    with pytest.raises(SystemExit):
        main(["profile", "--interval", "0", "--", "-c", "pass"])


def test_target_mode_against_an_embedded_server(leakcheck: None, capsys: pytest.CaptureFixture[str]) -> None:
    with EmbeddedServer() as server:
        code = main(
            [
                "profile",
                "--target",
                f"127.0.0.1:{server.port}",
                "--duration",
                "0.5",
                "--concurrency",
                "8",
                "--size",
                "200",
                "--memory",
                "--connections",
                "2",
            ]
        )
    assert code == 0
    out = capsys.readouterr().out
    assert f"127.0.0.1:{server.port} for 0.5 s, concurrency 8, 200 B bodies" in out
    assert "throughput:" in out and "hot spots" in out and "allocation hot spots" in out
    assert "\r" not in out  # not a terminal: no progress line


def test_target_progress_on_a_terminal_and_failures(leakcheck: None, capsys: pytest.CaptureFixture[str]) -> None:
    with EmbeddedServer() as server:
        report, sampler = run_target(
            "127.0.0.1",
            server.port,
            duration=0.6,
            concurrency=4,
            fid=9999,
            progress=True,
            memory=True,
            snapshot_every=0.2,
        )
    out = capsys.readouterr().out
    assert "\r  profiling" in out and "samples" in out
    assert any("requests failed" in n for n in report.notes)  # an unknown function: errors, counted
    assert not sampler.running
    with pytest.raises(ValueError, match="duration"):
        run_target("127.0.0.1", 1, duration=0)


def test_an_unreachable_target_is_a_named_error_and_leaks_nothing(leakcheck: None) -> None:
    threads = set(sys._current_frames())  # OS threads, patched or not
    with pytest.raises(ConnectionRefused):
        main(["profile", "--target", "127.0.0.1:1", "--duration", "0.2"])
    assert set(sys._current_frames()) <= threads


def test_progress_only_when_stdout_is_a_tty(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    with EmbeddedServer() as server:
        assert (
            main(["profile", "--target", f"[127.0.0.1]:{server.port}", "--duration", "0.4", "--concurrency", "2"]) == 0
        )
    assert "\r  profiling" in capsys.readouterr().out


def test_patch_all_flag_in_a_fresh_interpreter(script: Path) -> None:
    if running_patched():
        return  # the patched rerun of this module: the flag is proven by the plain run
    code = "import sys; from nexus_green.cli import main; sys.exit(main(sys.argv[1:]))"
    probe = script.parent / "probe.py"
    probe.write_text("import socket\nprint('patched socket:', socket.socket.__module__)\n")
    run = subprocess.run(
        [sys.executable, "-W", "error", "-c", code, "profile", "--patch-all", "--", str(probe)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    assert "patched socket: gevent" in run.stdout


def test_module_passes_under_patch_all() -> None:
    run = run_module_patched(__file__)
    assert run.returncode == 0, run.report()
