"""A fleet of worker processes for tests: start them, release them together, collect what each reports.

Shared state (docs/shared-state.md) is about several processes agreeing: a
breaker that opens in one worker, a limit that N workers share. The tests
prove it with real processes, each running a small script:

1. the script gets its arguments, then its worker index and the mode
   (``patched`` when the test itself runs after ``patch_all()``, else
   ``plain``: the script patches when told to);
2. it prints ``ready`` once set up, and reads one line ``START END``
   (wall-clock times) from stdin;
3. it works from START until END and prints one JSON object as its last line.

:func:`run_workers` starts ``count`` of them, waits (bounded) until every one
is ready, gives them all the same START shortly after, and returns their JSON
objects in worker order. A worker that fails or hangs fails the test with its
stderr; none outlives the call.

Example::

    >>> script = '''
    ... import json, sys, time
    ... print("ready", flush=True)
    ... start, end = map(float, sys.stdin.readline().split())
    ... time.sleep(max(0.0, start - time.time()))  # work from START until END
    ... print(json.dumps({"index": int(sys.argv[-2]), "mode": sys.argv[-1], "started": time.time() >= start}))
    ... '''
    >>> [(r["index"], r["started"]) for r in run_workers(script, [], duration=0.05, count=2)]
    [(0, True), (1, True)]
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import gevent
from gevent import subprocess as gsubprocess

from .patched import running_patched

__all__ = ["run_workers"]


def run_workers(
    script: str,
    args: list[str],
    *,
    duration: float,
    warmup: float = 0.0,
    count: int = 4,
    start_timeout: float = 30.0,
) -> list[dict[str, Any]]:
    """Run ``count`` copies of ``script`` together for ``warmup + duration`` seconds; their JSON reports in order.

    Each worker is ``python -c script *args INDEX MODE`` (see the module's
    docstring for the protocol). START is 0.2 s after the last one is ready,
    plus ``warmup``; END is ``duration`` after START.

    Example::

        >>> run_workers("print('ready'); import sys; sys.stdin.readline(); print('{}')", [], duration=0.0, count=1)
        [{}]
    """
    mode = "patched" if running_patched() else "plain"
    procs = [
        gsubprocess.Popen(
            [sys.executable, "-c", script, *args, str(i), mode],
            stdin=gsubprocess.PIPE,
            stdout=gsubprocess.PIPE,
            stderr=gsubprocess.PIPE,
        )
        for i in range(count)
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None and proc.stderr is not None
            with gevent.Timeout(start_timeout, AssertionError(f"a worker did not start within {start_timeout} s")):
                line = proc.stdout.readline()
            assert line.strip() == b"ready", line + proc.stderr.read()
        start_at = time.time() + 0.2 + warmup
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write(f"{start_at!r} {start_at + duration!r}\n".encode())
            proc.stdin.flush()
        results = []
        for proc in procs:
            out, err = proc.communicate(timeout=start_timeout + warmup + duration)
            assert proc.returncode == 0, err.decode()[-2000:]
            results.append(json.loads(out.decode().strip().splitlines()[-1]))
        return results
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=5)
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()
