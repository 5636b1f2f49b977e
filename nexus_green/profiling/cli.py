"""``nexus-green profile``: run a command, or a bounded Client workload against a server, under the profilers.

Two forms (wired into ``nexus-green`` by :func:`add_commands`)::

    nexus-green profile [options] -- script.py ARGS...      (or: -- -m module ARGS..., -- python script.py ...)
    nexus-green profile [options] --target HOST:PORT --duration S [--concurrency N --size B --connections C]

Both run the sampling profiler (:mod:`nexus_green.profiling.sampler`) and the
I/O counters (:mod:`nexus_green.profiling.io`), with ``--memory`` also
tracemalloc snapshots (:mod:`nexus_green.profiling.memory`), and print a
:class:`~nexus_green.profiling.report.ProfilingReport` (``--format text``,
``json`` or ``markdown``). ``--output DIR`` also writes ``profile.collapsed``
(flamegraph.pl), ``profile.speedscope.json`` (https://www.speedscope.app)
and ``report.txt`` / ``report.json`` / ``report.md``.

A command runs **in this process**, through :mod:`runpy`, not in a child
with an injected bootstrap: the sampler must read the stack of the thread
that runs the command's hub, and the report must read its memory and its
connections' counters; in-process all of that is a direct read, with no
file or pipe to carry results out of a child that may exit by ``os._exit``
or a signal, and the command's exit status and exceptions arrive as they
are. The cost: nexus_green and gevent are imported before the command runs,
so a script that calls ``gevent.monkey.patch_all()`` itself gets gevent's
warning about ``ssl`` imported first; run such a script with ``--patch-all``
(the profiler patches first, with that warning silenced: nexus_green
imports ``gevent.ssl`` itself and never relies on the patched module).

Progress (elapsed time, requests, samples) is shown on one line, only when
stdout is a terminal, and only for ``--target``: a command owns its terminal.

Example::

    >>> from nexus_green.testing import EmbeddedServer
    >>> with EmbeddedServer() as server:
    ...     code = main_profile(["--target", f"127.0.0.1:{server.port}", "--duration", "0.5", "--format", "json"])
    ... # doctest: +ELLIPSIS
    {
      "title": "127.0.0.1:... for 0.5 s, concurrency 50, 64 B bodies",
    ...
    >>> code
    0
"""

from __future__ import annotations

import argparse
import os
import runpy
import sys
import time
import traceback
import warnings
from typing import Any, Optional

import gevent
from gevent.pool import Pool

from ..client import Client
from ..errors import NexusError
from ..events import EventBus, default_bus
from ..greenlets import spawn
from .io import IOProfiler
from .memory import MemoryProfiler
from .report import ProfilingReport
from .sampler import DEFAULT_INTERVAL, SamplingProfiler

__all__ = ["add_commands", "main_profile", "run_command", "run_target", "split_command", "CommandError"]

_FORMATS = ("text", "json", "markdown")


class CommandError(ValueError):
    """The command to profile could not be understood (nothing to run, a missing script or module name).

    Example::

        >>> split_command(["--"])
        Traceback (most recent call last):
        ...
        nexus_green.profiling.cli.CommandError: nothing to profile: give a command after --, or --target HOST:PORT
    """


def split_command(argv: list[str]) -> tuple[str, str, list[str]]:
    """``(kind, what, sys.argv)`` of a command line: kind ``path``, ``module`` or ``code``.

    A leading ``--`` and a leading ``python``/``python3``/this interpreter are dropped.

    Example::

        >>> split_command(["--", "python3", "-m", "http.server", "0"])
        ('module', 'http.server', ['http.server', '0'])
        >>> split_command(["app.py", "-v"])
        ('path', 'app.py', ['app.py', '-v'])
        >>> split_command(["-c", "print(1)", "x"])
        ('code', 'print(1)', ['-c', 'x'])
    """
    args = list(argv)
    if args and args[0] == "--":
        args = args[1:]
    if args and (os.path.basename(args[0]).startswith("python") or args[0] == sys.executable):
        args = args[1:]
    if not args:
        raise CommandError("nothing to profile: give a command after --, or --target HOST:PORT")
    if args[0] in ("-m", "-c"):
        if len(args) < 2:
            raise CommandError(f"{args[0]} needs an argument (a module name or code)")
        if args[0] == "-m":
            return "module", args[1], [args[1], *args[2:]]
        return "code", args[1], ["-c", *args[2:]]
    return "path", args[0], args


def run_command(
    argv: list[str],
    *,
    interval: float = DEFAULT_INTERVAL,
    memory: bool = False,
    greenlet_names: bool = False,
    bus: EventBus = default_bus,
) -> tuple[int, ProfilingReport, SamplingProfiler]:
    """Run a Python command line in this process under the profilers: ``(exit status, report, sampler)``.

    The command sees ``sys.argv`` as it would have (script or module name
    first); ``sys.argv`` and ``sys.path`` are restored afterwards. An
    exception from the command is printed and gives status 1; ``SystemExit``
    gives its code. The profilers stop in every case.

    Example::

        >>> status, report, prof = run_command(["-c", "sum(range(10**6))"], interval=0.001)
        >>> status, report.title, prof.running
        (0, '-c sum(range(10**6))', False)
    """
    kind, what, new_argv = split_command(argv)
    if kind == "path" and not os.path.isfile(what):
        raise CommandError(f"no such script: {what}")
    sampler = SamplingProfiler(interval, greenlet_names=greenlet_names)
    mem = MemoryProfiler() if memory else None
    io = IOProfiler(bus)
    saved_argv, saved_path = sys.argv[:], sys.path[:]
    status = 0
    sys.argv = new_argv
    if kind == "path":
        sys.path.insert(0, os.path.dirname(os.path.abspath(what)))
    elif kind == "module":
        sys.path.insert(0, os.getcwd())
    try:
        if mem is not None:
            mem.start()
            mem.snapshot()
        io.start()
        sampler.start()
        # The command's globals stay alive until the last memory snapshot: what it keeps is its memory.
        namespace: dict[str, Any] = {"__name__": "__main__"}
        try:
            if kind == "path":
                namespace = runpy.run_path(what, run_name="__main__")
            elif kind == "module":
                namespace = runpy.run_module(what, run_name="__main__", alter_sys=True)
            else:
                exec(compile(what, "<profile -c>", "exec"), namespace)
        except SystemExit as exc:
            code = exc.code
            status = code if isinstance(code, int) else (0 if code is None else 1)
            if code is not None and not isinstance(code, int):
                print(code, file=sys.stderr)
        except Exception:
            traceback.print_exc()
            status = 1
        finally:
            sampler.stop()
            io.stop()
            if mem is not None:
                mem.snapshot()
            namespace.clear()
    finally:
        if mem is not None:
            mem.stop()
        sys.argv, sys.path[:] = saved_argv, saved_path
    report = ProfilingReport.build(
        title=" ".join([_short_title(kind, what), *new_argv[1:]]),
        sampler=sampler,
        memory=mem,
        io=io.figures(),
    )
    if status:
        report.notes.append(f"the command exited with status {status}")
    return status, report, sampler


def run_target(
    host: str,
    port: int,
    *,
    duration: float,
    concurrency: int = 50,
    size: int = 64,
    connections: int = 1,
    fid: int = 1,
    interval: float = DEFAULT_INTERVAL,
    memory: bool = False,
    snapshot_every: float = 1.0,
    progress: bool = False,
    greenlet_names: bool = False,
) -> tuple[ProfilingReport, SamplingProfiler]:
    """Profile a bounded echo workload (``concurrency`` greenlets, ``size``-byte bodies, function ``fid``).

    The Client runs on its own bus; it stops after ``duration`` seconds. A
    failed request is counted (``report.notes``) and the worker goes on.
    With ``memory`` a snapshot is taken every ``snapshot_every`` seconds.
    """
    if duration <= 0 or concurrency < 1 or size < 0 or connections < 1:
        raise ValueError("duration must be > 0, concurrency and connections >= 1, size >= 0")
    bus = EventBus()
    sampler = SamplingProfiler(interval, greenlet_names=greenlet_names)
    mem = MemoryProfiler() if memory else None
    done = [0, 0]  # requests answered, failed
    payload = b"x" * size
    t0 = time.perf_counter()
    with Client(f"tcp://{host}:{port}", bus=bus, timeout=10.0, max_size=connections) as client:
        client.connect()
        io = IOProfiler(bus)
        stop_at = time.perf_counter() + duration

        def worker(_: int) -> None:
            request = client.request
            while time.perf_counter() < stop_at:
                try:
                    request(payload, fid=fid)
                    done[0] += 1
                except NexusError:
                    done[1] += 1
                    gevent.sleep(0.01)

        def watch() -> None:
            last_snap = time.perf_counter()
            while True:
                gevent.sleep(0.25)
                now = time.perf_counter()
                if mem is not None and now - last_snap >= snapshot_every:
                    mem.snapshot()
                    last_snap = now
                if progress:
                    sys.stdout.write(
                        f"\r  profiling {min(duration, now - t0):5.1f}/{duration:g} s: "
                        f"{done[0]:,} requests, {sampler.samples:,} samples "
                    )
                    sys.stdout.flush()

        if mem is not None:
            mem.start()
            mem.snapshot()
        watcher = spawn(watch, name="profile-progress")
        io.start()
        sampler.start()
        started = time.perf_counter()
        try:
            pool = Pool(concurrency)
            for _ in pool.imap_unordered(worker, range(concurrency)):
                pass
        finally:
            elapsed = time.perf_counter() - started
            sampler.stop()
            io.stop()
            watcher.kill()
            if mem is not None:
                mem.snapshot()
                mem.stop()
            if progress:
                sys.stdout.write("\n")
        report = ProfilingReport.build(
            title=f"{host}:{port} for {duration:g} s, concurrency {concurrency}, {size} B bodies",
            sampler=sampler,
            memory=mem,
            io=io.figures(),
            client=client,
            concurrency=concurrency,
            throughput=done[0] / elapsed if elapsed > 0 else 0.0,
        )
    if done[1]:
        report.notes.append(f"{done[1]} requests failed")
    return report, sampler


def _short_title(kind: str, what: str) -> str:
    if kind != "code":
        return what
    lines = what.strip().splitlines() or [""]
    more = "..." if len(lines[0]) > 40 or len(lines) > 1 else ""
    return f"-c {lines[0][:40]}{more}"


def _parse_target(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"--target wants HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def _emit(report: ProfilingReport, sampler: SamplingProfiler, args: argparse.Namespace) -> None:
    text = {"text": report.to_text, "json": report.to_json, "markdown": report.to_markdown}[args.format]()
    print(text.rstrip("\n"))
    if args.output:
        paths = sampler.write(args.output) + report.write(args.output)
        print(f"wrote {', '.join(paths)}", file=sys.stderr)


def _profile(args: argparse.Namespace) -> int:
    if args.patch_all:
        from gevent import monkey

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", monkey.MonkeyPatchWarning)
            monkey.patch_all()
    if args.target is not None:
        if args.argv:
            raise CommandError("give either --target HOST:PORT or a command after --, not both")
        host, port = args.target
        report, sampler = run_target(
            host,
            port,
            duration=args.duration,
            concurrency=args.concurrency,
            size=args.size,
            connections=args.connections,
            interval=args.interval,
            memory=args.memory,
            progress=sys.stdout.isatty(),
            greenlet_names=args.greenlet_names,
        )
        _emit(report, sampler, args)
        return 0
    status, report, sampler = run_command(
        args.argv, interval=args.interval, memory=args.memory, greenlet_names=args.greenlet_names
    )
    _emit(report, sampler, args)
    return status


def _check_interval(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"--interval must be > 0 seconds, got {text}")
    return value


def add_commands(sub: Any) -> None:
    """Add ``profile`` to the ``nexus-green`` subcommands (``sub`` is argparse's subparsers object)."""
    p = sub.add_parser(
        "profile",
        help="profile a Python command (after --) or a Client workload against --target HOST:PORT",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    p.add_argument("--target", type=_parse_target, default=None, metavar="HOST:PORT")
    p.add_argument("--duration", type=float, default=10.0, help="seconds of workload with --target (default 10)")
    p.add_argument("--concurrency", type=int, default=50, help="greenlets sending requests with --target")
    p.add_argument("--size", type=int, default=64, help="request body bytes with --target")
    p.add_argument("--connections", type=int, default=1, help="pool size with --target")
    p.add_argument("--interval", type=_check_interval, default=DEFAULT_INTERVAL, help="sampling interval, seconds")
    p.add_argument("--memory", action="store_true", help="also trace allocations (tracemalloc; slows the run)")
    p.add_argument(
        "--greenlet-names",
        action="store_true",
        help="label samples with greenlet names (a switch hook: costs ~0.1-0.25 us per greenlet switch)",
    )
    p.add_argument("--format", choices=_FORMATS, default="text")
    p.add_argument("--output", default=None, metavar="DIR", help="write the stacks and the report into DIR")
    p.add_argument("--patch-all", action="store_true", help="gevent.monkey.patch_all() before running the command")
    p.add_argument("argv", nargs=argparse.REMAINDER, metavar="COMMAND", help="-- then the Python command to profile")
    p.set_defaults(fn=_profile)


def main_profile(argv: Optional[list[str]] = None) -> int:
    """``nexus-green profile ARGS`` on its own (what :func:`nexus_green.cli.main` runs for ``profile``)."""
    ap = argparse.ArgumentParser(prog="nexus-green")
    sub = ap.add_subparsers(dest="command_name", required=True)
    add_commands(sub)
    args = ap.parse_args(["profile", *(argv or [])])
    return int(args.fn(args))
