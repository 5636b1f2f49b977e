"""Helpers shared by the client-side benchmarks in bench/ (frames, percentiles, CPU and RSS, child runs).

Scripts in bench/ run as ``python bench/NAME.py``, so bench/ is on ``sys.path``
and they import this module as ``common``.

* :func:`frame` builds a NexusKit request frame (Len u32 BE, 20-byte header, body);
* :func:`recv_exact` reads exactly n bytes from a blocking (or gevent) socket;
* :func:`percentile` nearest-rank percentile;
* :func:`cpu_seconds` user+system CPU seconds of a process, from /proc/PID/stat;
* :func:`rss_bytes` resident set size of this process, from /proc/self/statm;
* :func:`code_env` the environment for a child that imports nexus_green from another tree (``--code DIR``);
* :func:`run_child` runs ``script --child ...`` and returns the JSON of its last stdout line;
* :func:`run_rounds` runs variants as children, interleaved for several rounds, against one peer;
* :func:`median_interval` a bootstrap interval of a median (the interleaved overhead benchmarks).
"""

from __future__ import annotations

import json
import os
import random
import statistics
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
PREFIX = struct.Struct(">IHHBBIIIH")  # Len, Tag, Ver, Tp, Res, Qid, Fid, Code, Dh
TAG = 0x7A5A


def frame(qid: int, body: bytes, fid: int = 1, tp: int = 0) -> bytes:
    """One request frame: ``Len = 20 + len(body)``, Tag 0x7A5A, Ver 1, Res 0, Code 0, Dh 0."""
    return PREFIX.pack(20 + len(body), TAG, 1, tp, 0, qid, fid, 0, 0) + body


def recv_exact(sock: Any, n: int) -> bytes:
    """Read exactly ``n`` bytes (ConnectionError if the peer closes first).

    ``recv(n - got)`` and one join: on this machine it reads a 1 MiB answer 3-4x
    faster than ``recv_into`` slices of a preallocated bytearray, with gevent
    sockets and with blocking ones alike.
    """
    chunk = sock.recv(n)
    if len(chunk) == n:
        return chunk
    if not chunk:
        raise ConnectionError("peer closed")
    parts = [chunk]
    got = len(chunk)
    while got < n:
        chunk = sock.recv(n - got)
        if not chunk:
            raise ConnectionError("peer closed")
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile of ``values`` (0.0 for no values)."""
    values = sorted(values)
    if not values:
        return 0.0
    return values[max(0, min(len(values) - 1, int(q * len(values) + 0.5) - 1))]


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by process ``pid`` (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: str = "self") -> int:
    """Resident set size of a process in bytes (Linux /proc)."""
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """This process's resident size: ``base`` when started, ``peak`` sampled every ``interval`` s in a greenlet until stop()."""

    def __init__(self, interval: float = 0.01) -> None:
        self.interval = interval
        self.base = self.peak = 0
        self._running = False
        self._greenlet: Any = None

    def start(self) -> PeakRSS:
        import gevent

        self.base = self.peak = rss_bytes()
        self._running = True
        self._greenlet = gevent.spawn(self._sample)
        return self

    def _sample(self) -> None:
        import gevent

        while self._running:
            self.peak = max(self.peak, rss_bytes())
            gevent.sleep(self.interval)

    def stop(self) -> int:
        """Stop sampling (after a last reading); returns the peak in bytes."""
        self._running = False
        if self._greenlet is not None:
            self._greenlet.join()
        self.peak = max(self.peak, rss_bytes())
        return self.peak


def code_env(code: Optional[str]) -> dict[str, str]:
    """The environment for a child that must import nexus_green from the tree ``code`` (None: this tree)."""
    env = dict(os.environ)
    if code:
        root = str(Path(code).resolve())
        if not (Path(root) / "nexus_green" / "__init__.py").exists():
            raise SystemExit(f"--code {code}: no nexus_green/__init__.py there")
        env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    return env


def check_code_origin(code: Optional[str]) -> str:
    """In a child: the directory nexus_green was imported from; exits if it is not the tree ``code``."""
    import nexus_green

    origin = str(Path(nexus_green.__file__).resolve().parent.parent)
    if code and origin != str(Path(code).resolve()):
        raise SystemExit(f"nexus_green was imported from {origin}, not from --code {code}")
    return origin


def run_child(argv: list[str], timeout: float, env: Optional[dict[str, str]] = None) -> dict[str, Any]:
    """Run ``python argv...`` and return the JSON object printed on its last stdout line."""
    out = subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=timeout, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"child {argv[:4]} failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_rounds(
    script: str,
    variants: list[str],
    seconds: float,
    rounds: int,
    extra: Optional[list[str]] = None,
    peer: Any = None,
) -> dict[str, list[dict[str, Any]]]:
    """Run ``script --child VARIANT`` for every variant, ``rounds`` times interleaved, against one echo peer.

    Each child prints one JSON line of results; ``server_cpu`` (the peer's CPU
    share during that child) is added so a run can show the peer was not the
    bottleneck. ``extra`` arguments are passed to every child. ``peer`` is a
    started :class:`peers.Peer` to use (default: bench/echo_peer.py, started
    and stopped here). Shared by every client-side comparison in bench/.
    """
    own = peer is None
    if own:
        proc = subprocess.Popen([sys.executable, str(HERE / "echo_peer.py")], stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        pid, port = proc.pid, int(proc.stdout.readline().rsplit(":", 1)[1])
    else:
        pid, port = peer.pid, peer.port
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    try:
        for _ in range(rounds):
            for variant in variants:
                cpu0, t0 = cpu_seconds(pid), time.perf_counter()
                argv = [script, "--child", variant, "--port", str(port), "--seconds", str(seconds), *(extra or [])]
                res = run_child(argv, timeout=seconds * 10 + 60)
                res["server_cpu"] = (cpu_seconds(pid) - cpu0) / (time.perf_counter() - t0)
                runs[variant].append(res)
    finally:
        if own:
            proc.terminate()
            proc.wait(10)
    return runs


def median_interval(costs: list[float], resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """A 95% bootstrap interval of the median of ``costs`` (percentile method).

    One 0.2 s slice's cost scatters by several percent on a shared machine;
    the interval says how far the median of this many cycles can be trusted.
    """
    rng = random.Random(seed)
    medians = sorted(statistics.median(rng.choices(costs, k=len(costs))) for _ in range(resamples))
    return medians[int(0.025 * resamples)], medians[int(0.975 * resamples) - 1]


def interleaved_rounds(
    script: str, child: Callable[[int, float, float, int], None], argv: Optional[list[str]] = None
) -> Optional[tuple[Any, list[dict[str, Any]]]]:
    """The command line of an interleaved overhead benchmark (monitoring, tracing): states rotated in slices.

    In the parent: runs ``--rounds`` fresh child processes of ``script`` (see
    :func:`run_rounds`) and returns ``(args, rounds)``. In a child (``--child
    interleaved --port N``): calls ``child(port, seconds, slice, seed)`` and
    returns None.
    """
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=12.0, help="measured time per round, all states together")
    ap.add_argument("--slice", type=float, default=0.2, help="seconds per state before switching")
    ap.add_argument("--rounds", type=int, default=3, help="fresh client processes, one after another")
    ap.add_argument("--seed", type=int, default=1, help="seed of the slice order")
    ap.add_argument("--child", choices=["interleaved"])
    ap.add_argument("--port", type=int)
    args = ap.parse_args(argv)
    if args.child:
        child(args.port, args.seconds, args.slice, args.seed)
        return None
    runs = run_rounds(
        script, ["interleaved"], args.seconds, args.rounds, ["--slice", str(args.slice), "--seed", str(args.seed)]
    )
    return args, runs["interleaved"]
