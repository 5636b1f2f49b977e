"""Run a test module again after ``gevent.monkey.patch_all()``: the harness behind "plain and patched".

nexus_green must behave the same whether or not the application patched
(docs/design.md: every seam test runs both ways). A test module proves it by rerunning itself in a
fresh interpreter that calls ``gevent.monkey.patch_all()`` before anything
else is imported, then ``pytest.main`` on the same file. The pattern, one
test at the end of the module::

    from nexus_green.testing import run_module_patched

    def test_module_passes_under_patch_all() -> None:
        run = run_module_patched(__file__)
        assert run.returncode == 0, run.report()

The rerun deselects tests named ``test_module_passes_under_patch_all``
(:data:`SELF_TEST`), so it does not recurse. It is bounded: after
``timeout`` seconds (keep it below the pytest-timeout of the calling test)
the child gets SIGUSR1, which makes it dump every thread's and every
greenlet's stack to stderr, and is then killed; ``run.timed_out`` is true and ``run.report()`` shows the
dump. The child inherits the environment, so under ``coverage run`` with
``[coverage:run] patch = subprocess`` it is measured too (coverage's own
startup imports nothing that ``patch_all`` must come before). Inside the
child :func:`running_patched` is true: a test that cannot work patched (or
that would only spawn more interpreters) can skip itself with it.

The subprocess is run through ``gevent.subprocess``, so other greenlets of the
calling test keep running while it waits.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Iterable, Mapping
from subprocess import CompletedProcess
from typing import Optional, Union

import gevent
from gevent import monkey
from gevent import subprocess as gsubprocess

__all__ = ["SELF_TEST", "DEFAULT_TIMEOUT", "PatchedRun", "run_module_patched", "running_patched"]

SELF_TEST = "test_module_passes_under_patch_all"
DEFAULT_TIMEOUT = 100.0  # below the suite's 120 s pytest-timeout
_DUMP_GRACE = 1.0  # seconds between the stack-dump signal and the kill

# The child: patch first, then everything else (argv: deselected names as JSON, then pytest's arguments).
_BOOTSTRAP = r"""
from gevent import monkey

monkey.patch_all()

import faulthandler
import json
import os
import signal
import sys

import gevent.util

# pytest captures fd 2 while a test runs; the dump must reach the real stderr.
_stderr = os.fdopen(os.dup(2), "w")


def _dump_greenlets(signum, frame):
    print("nexus_green.testing.patched: timed out; every greenlet's stack:", file=_stderr)
    gevent.util.print_run_info(file=_stderr)
    _stderr.flush()


# On SIGUSR1: the threads' stacks at once (even if the hub is stuck in C), then every greenlet's.
signal.signal(signal.SIGUSR1, _dump_greenlets)
faulthandler.register(signal.SIGUSR1, file=_stderr, all_threads=True, chain=True)

import pytest


class _DeselectSelf:
    def __init__(self, names):
        self.names = set(names)

    def pytest_collection_modifyitems(self, config, items):
        drop = [item for item in items if getattr(item, "originalname", item.name) in self.names]
        if drop:
            config.hook.pytest_deselected(items=drop)
            items[:] = [item for item in items if item not in drop]


print(f"nexus_green.testing.patched: gevent.monkey.patch_all() done, socket patched: {monkey.is_module_patched('socket')}")
sys.stdout.flush()
sys.exit(pytest.main(sys.argv[2:], plugins=[_DeselectSelf(json.loads(sys.argv[1]))]))
"""


class PatchedRun(CompletedProcess[str]):
    """The outcome of :func:`run_module_patched`: a ``CompletedProcess`` (text output) plus ``timed_out``.

    Example::

        >>> run = PatchedRun(["python"], 1, "F\\n", "", path="t.py", timed_out=False, timeout=5.0)
        >>> print(run.report())
        patched run of t.py exited with 1
        --- stdout (last 300 lines) ---
        F
        --- stderr (last 300 lines) ---
        <BLANKLINE>
    """

    def __init__(
        self, args: list[str], returncode: int, stdout: str, stderr: str, *, path: str, timed_out: bool, timeout: float
    ) -> None:
        super().__init__(args, returncode, stdout, stderr)
        self.path = path
        self.timed_out = timed_out
        self.timeout = timeout

    def report(self, lines: int = 300) -> str:
        """What to show when the run failed: how it ended, then the tail of stdout and of stderr."""
        how = f"timed out after {self.timeout} s and was killed" if self.timed_out else f"exited with {self.returncode}"

        def tail(text: str) -> str:
            return "\n".join(text.splitlines()[-lines:])

        return (
            f"patched run of {self.path} {how}\n"
            f"--- stdout (last {lines} lines) ---\n{tail(self.stdout)}\n"
            f"--- stderr (last {lines} lines) ---\n{tail(self.stderr)}"
        )


def run_module_patched(
    path: Union[str, os.PathLike[str]],
    *pytest_args: str,
    timeout: float = DEFAULT_TIMEOUT,
    deselect: Iterable[str] = (SELF_TEST,),
    env: Optional[Mapping[str, str]] = None,
    cwd: Union[str, os.PathLike[str], None] = None,
) -> PatchedRun:
    """Run pytest on ``path`` in a fresh interpreter that called ``gevent.monkey.patch_all()`` first.

    ``pytest_args`` are added after the path (``"-k", "tls"``, ``"-x"``);
    tests whose name is in ``deselect`` are left out; ``env`` replaces the
    inherited environment. Never raises for a failing or hanging child: the
    result says what happened (``returncode``, ``timed_out``, ``report()``).

    Example (a throw-away module; the doctest takes about a second)::

        >>> import pathlib, tempfile
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     module = pathlib.Path(tmp) / "test_it.py"
        ...     _ = module.write_text("import socket\\ndef test_patched():\\n    assert 'gevent' in socket.socket.__module__\\n")
        ...     run = run_module_patched(module, "-q", "-p", "no:cacheprovider", timeout=60)
        >>> run.returncode, run.timed_out, "1 passed" in run.stdout
        (0, False, True)
    """
    target = os.fspath(path)
    args = [sys.executable, "-c", _BOOTSTRAP, json.dumps(sorted(set(deselect))), target, *pytest_args]
    proc = gsubprocess.Popen(
        args,
        stdin=gsubprocess.DEVNULL,
        stdout=gsubprocess.PIPE,
        stderr=gsubprocess.PIPE,
        text=True,
        env=dict(env) if env is not None else None,
        cwd=cwd,
    )
    timed_out = False
    try:
        out, err = proc.communicate(timeout=timeout)
    except gsubprocess.TimeoutExpired:
        timed_out = True
        proc.send_signal(signal.SIGUSR1)  # the child dumps its threads' and greenlets' stacks
        gevent.sleep(_DUMP_GRACE)
        proc.kill()
        # A second communicate() keeps what the first one read (subprocess's contract).
        out, err = proc.communicate()
    return PatchedRun(args, proc.returncode, out, err, path=target, timed_out=timed_out, timeout=timeout)


def running_patched() -> bool:
    """True when this interpreter's ``socket`` module was patched by gevent (as in :func:`run_module_patched`'s child).

    Example::

        >>> import socket
        >>> running_patched() == socket.socket.__module__.startswith("gevent")
        True
    """
    return bool(monkey.is_module_patched("socket"))
