"""Performance diagnostics: throughput and concurrency, memory growth, CPU hot spots, buffer efficiency.

* :func:`run_load` -- ``count`` requests from ``concurrency`` greenlets,
  bounded in count *and* in time (``duration``). With an echo function
  (``echo_fid``) they are requests through a real Client; without one they
  are heartbeat round trips on ``concurrency`` raw links (any NexusKit peer
  answers those). It returns three results:

  * ``throughput`` -- messages/s, latency average and percentiles, errors;
  * ``cpu`` -- the process's CPU use during the test (``time.process_time``
    over wall time, every thread counted) and its hot spots, from the
    sampling profiler of :mod:`nexus_green.profiling` (a native thread that
    sees greenlets), by function self time;
  * ``buffers`` -- buffer efficiency from the transport's own figures
    (:class:`~nexus_green.profiling.IOProfiler`: bytes and frames per write
    batch and per read); skipped in heartbeat mode (raw links have no
    transport counters).

* :func:`check_memory_growth` -- ``rounds`` rounds of ``per_round`` echo
  requests through a Client; after each round a full ``gc.collect()`` and a
  reading of the memory Python allocated (``tracemalloc``'s traced total,
  so it counts Python objects only and is not blurred by the allocator
  keeping freed pages). Memory that grows in every round after the first,
  by more than ``threshold_bytes`` in all, raises a leak suspicion naming
  the allocation sites that grew most. The process's resident size
  (``/proc/self/statm``) is reported alongside.

Example::

    >>> from nexus_green.testing import EmbeddedServer, FID_ECHO
    >>> with EmbeddedServer() as server:
    ...     t, cpu, buffers = run_load(Target(host=server.host, port=server.port), echo_fid=FID_ECHO, count=50)
    >>> t.status, t.data["completed"], t.data["mode"], buffers.data["frames_sent"]
    ('ok', 50, 'client', 50)
"""

from __future__ import annotations

import gc
import os
import time
import tracemalloc
from typing import Any, Optional

from gevent.pool import Pool

from ..errors import NexusError
from ..events import EventBus
from ..profiling import IOProfiler, SamplingProfiler
from ..protocol.frames import FrameDecoder, heartbeat_frame
from .connection import _ms, connect_failure
from .network import measuring_options, percentile
from .results import CheckResult, Finding, status_of
from .target import Target, open_link

__all__ = ["check_memory_growth", "rss_bytes", "run_load"]


def rss_bytes() -> Optional[int]:
    """The process's resident set size in bytes (``/proc/self/statm``), or None where there is no /proc.

    Example::

        >>> import sys
        >>> sys.platform != "linux" or rss_bytes() > 1_000_000
        True
    """
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):  # pragma: no cover - Linux has /proc
        return None


class _Heartbeats:
    """Heartbeat round trips on raw links: the load when there is no echo function.

    Each link has the socket timeout ``timeout``; a link that failed (a
    timeout included: its answer may still come) is closed and replaced, so
    a late answer is never taken for the next one.
    """

    def __init__(self, target: Target, n: int, timeout: float) -> None:
        self.target = target
        self.timeout = timeout
        self.links: list[Any] = []
        self.free: list[Any] = []
        try:
            for _ in range(n):
                self.free.append(self._open())
        except BaseException:
            self.close()
            raise

    def _open(self) -> Any:
        sock = open_link(self.target, self.timeout)
        self.links.append(sock)
        return sock

    def __call__(self) -> None:
        sock = self.free.pop() if self.free else self._open()
        ok = False
        try:
            sock.sendall(heartbeat_frame())
            dec = FrameDecoder()
            while True:
                chunk = sock.recv(4096)
                if not chunk:
                    raise ConnectionResetError("the peer closed the connection")
                if any(f.is_heartbeat and f.is_response for f in dec.feed(chunk)):
                    break
            ok = True
        finally:
            if ok:
                self.free.append(sock)
            else:
                sock.close()
                self.links.remove(sock)

    def close(self) -> None:
        for s in self.links:
            s.close()
        self.links.clear()
        self.free.clear()


def run_load(
    target: Target,
    *,
    echo_fid: Optional[int] = None,
    count: int = 200,
    concurrency: int = 8,
    size: int = 64,
    duration: float = 10.0,
    timeout: float = 5.0,
    profile: bool = True,
    hot_spots: int = 8,
    client_options: Optional[dict[str, Any]] = None,
) -> tuple[CheckResult, CheckResult, CheckResult]:
    """A throughput and concurrency test, bounded by ``count`` requests and ``duration`` seconds.

    Returns ``(throughput, cpu, buffers)`` results (see the module doc).
    ``timeout`` bounds each request and the connects. Errors are counted:
    some failing is a warning, all failing is critical; a run cut short by
    ``duration`` says so (info).

    ``throughput.data``: ``mode`` (``client`` or ``heartbeat``), ``requests``
    (asked), ``completed``, ``errors``, ``error_samples``, ``concurrency``,
    ``size``, ``seconds``, ``messages_per_s``, ``avg_ms``, ``p50_ms``,
    ``p95_ms``, ``p99_ms``, ``max_ms``, ``cut_by_time``.
    """
    if count < 1 or concurrency < 1:
        raise ValueError(f"count and concurrency must be at least 1, not {count!r} and {concurrency!r}")
    if duration <= 0:
        raise ValueError(f"duration must be > 0 seconds, not {duration!r}")
    t0 = time.perf_counter()
    mode = "client" if echo_fid is not None else "heartbeat"
    bus = EventBus()
    latencies: list[float] = []
    errors: list[str] = []
    findings: list[Finding] = []
    client: Any = None
    heartbeats: Optional[_Heartbeats] = None
    io = IOProfiler(bus)
    prof = SamplingProfiler(interval=0.002) if profile else None
    started = [0]
    end = time.monotonic() + duration
    payload = os.urandom(size)
    wall = cpu = 0.0
    try:
        if mode == "client":
            from ..client import Client

            opts = measuring_options(
                target, timeout, {"max_size": max(1, min(concurrency, 8)), **(client_options or {})}
            )
            client = Client(target.url, bus=bus, **opts)
            client.connect(timeout=timeout)

            def one() -> None:
                client.request(payload, fid=echo_fid, timeout=timeout)

        else:
            heartbeats = _Heartbeats(target, concurrency, timeout)
            one = heartbeats

        def worker(_: int) -> None:
            while started[0] < count and time.monotonic() < end:
                started[0] += 1
                s = time.perf_counter()
                try:
                    one()  # bounded by the request timeout, or the raw link's socket timeout
                except (NexusError, OSError) as exc:
                    errors.append(str(exc))
                else:
                    latencies.append(time.perf_counter() - s)

        io.start()
        if prof is not None:
            prof.start()
        c0, w0 = time.process_time(), time.perf_counter()
        try:
            pool = Pool(concurrency)
            for _ in pool.imap_unordered(worker, range(concurrency)):
                pass
        finally:
            cpu, wall = time.process_time() - c0, time.perf_counter() - w0
            if prof is not None:
                prof.stop()
            io.stop()
    except (NexusError, OSError) as exc:
        findings.append(connect_failure("throughput", exc, target.label))
    finally:
        if client is not None:
            client.close()
        if heartbeats is not None:
            heartbeats.close()
    done = len(latencies)
    ms = [x * 1000.0 for x in latencies]
    if errors:
        findings.append(
            Finding(
                check="throughput",
                code="throughput.errors",
                severity="critical" if not done else "warning",
                message=f"{len(errors)} of {len(errors) + done} requests failed (first: {errors[0]})",
                recommendation="see the connection checks; lower the concurrency if the server sheds load",
            )
        )
    cut = bool(started[0] < count and not findings)
    if cut:
        findings.append(
            Finding(
                check="throughput",
                code="throughput.cut_by_time",
                severity="info",
                message=f"the test stopped at its time limit ({duration:g} s) after {done} of {count} requests",
                recommendation="the figures stand; raise the duration or lower the count for a full run",
            )
        )
    data = {
        "mode": mode,
        "requests": count,
        "completed": done,
        "errors": len(errors),
        "error_samples": errors[:3],
        "concurrency": concurrency,
        "size": size if mode == "client" else 24,
        "seconds": round(wall, 6),
        "messages_per_s": round(done / wall, 1) if wall > 0 and done else 0.0,
        "avg_ms": round(sum(ms) / done, 3) if done else None,
        "p50_ms": round(percentile(ms, 0.5), 3) if done else None,
        "p95_ms": round(percentile(ms, 0.95), 3) if done else None,
        "p99_ms": round(percentile(ms, 0.99), 3) if done else None,
        "max_ms": round(max(ms), 3) if done else None,
        "cut_by_time": cut,
    }
    throughput = CheckResult(
        name="throughput",
        status=status_of(findings),
        duration_ms=_ms(time.perf_counter() - t0),
        data=data,
        findings=tuple(findings),
    )
    return throughput, _cpu_result(prof, cpu, wall, hot_spots, done), _buffers_result(io, mode, done)


def _cpu_result(prof: Optional[SamplingProfiler], cpu: float, wall: float, limit: int, done: int) -> CheckResult:
    if wall <= 0 or not done:
        return CheckResult(name="cpu", status="skipped", skipped_reason="no request completed: nothing to profile")
    spots = []
    if prof is not None:
        total = sum(prof.stacks().values()) or 1
        for name, own, tot in [f for f in prof.functions() if f[1] > 0][:limit]:
            spots.append(
                {
                    "function": name,
                    "self_ms": round(own / 1000.0, 3),
                    "total_ms": round(tot / 1000.0, 3),
                    "self_pct": round(100.0 * own / total, 1),
                }
            )
    data = {
        "cpu_pct": round(100.0 * cpu / wall, 1),
        "process_cpu_s": round(cpu, 6),
        "wall_s": round(wall, 6),
        "cpu_ms_per_message": round(1000.0 * cpu / done, 4),
        "samples": prof.samples if prof is not None else 0,
        "hot_spots": spots,
    }
    return CheckResult(name="cpu", status="ok", duration_ms=_ms(wall), data=data)


def _buffers_result(io: IOProfiler, mode: str, done: int) -> CheckResult:
    if mode != "client":
        return CheckResult(
            name="buffers",
            status="skipped",
            skipped_reason="heartbeat mode uses raw links without transport counters: pass --echo-fid",
        )
    if not done:
        return CheckResult(name="buffers", status="skipped", skipped_reason="no request completed: no traffic to read")
    fig = io.figures()
    findings = []
    if fig.writes >= 50 and fig.frames_per_write < 1.2 and fig.bytes_per_write < 512:
        findings.append(
            Finding(
                check="buffers",
                code="buffers.small_writes",
                severity="info",
                message=f"each write carries {fig.frames_per_write:.2f} frames, {fig.bytes_per_write:.0f} bytes: "
                "one system call per small request",
                recommendation="more concurrency per connection lets the writer coalesce frames (max_in_flight)",
            )
        )
    return CheckResult(name="buffers", status="ok", data=fig.as_dict(), findings=tuple(findings))


def check_memory_growth(
    target: Target,
    *,
    echo_fid: Optional[int] = None,
    rounds: int = 5,
    per_round: int = 100,
    size: int = 1024,
    threshold_bytes: int = 256 * 1024,
    timeout: float = 5.0,
    duration: float = 20.0,
    client_options: Optional[dict[str, Any]] = None,
) -> CheckResult:
    """Memory over ``rounds`` rounds of ``per_round`` echo requests: a leak suspicion when it keeps growing.

    See the module doc for the method (tracemalloc after a full collection).
    ``duration`` bounds the check: rounds not started by then are not run
    (fewer than 3 rounds cannot suspect a leak). Skipped without ``echo_fid``.

    ``data``: ``method`` (``tracemalloc``), ``rounds`` (done),
    ``per_round``, ``samples_bytes`` (traced memory after each round),
    ``growth_bytes`` (last minus first), ``growth_per_request_bytes``,
    ``leak_suspected``, ``top_growth`` (allocation sites), ``rss_bytes``.

    Example::

        >>> check_memory_growth(Target(host="127.0.0.1", port=1)).status
        'skipped'
    """
    if echo_fid is None:
        return CheckResult(
            name="memory",
            status="skipped",
            skipped_reason="no echo function: pass echo_fid (--echo-fid) to measure memory over repeated requests",
        )
    if rounds < 1 or per_round < 1:
        raise ValueError(f"rounds and per_round must be at least 1, not {rounds!r} and {per_round!r}")
    from ..client import Client

    t0 = time.perf_counter()
    end = time.monotonic() + duration
    findings: list[Finding] = []
    samples: list[int] = []
    payload = os.urandom(size)
    started_tracing = not tracemalloc.is_tracing()
    if started_tracing:
        tracemalloc.start(8)
    first: Any = None
    last: Any = None
    try:
        with Client(target.url, **measuring_options(target, timeout, client_options)) as client:
            client.connect(timeout=timeout)
            client.request(payload, fid=echo_fid, timeout=timeout)  # warm up: first-use allocations are not growth
            for _ in range(rounds):
                if time.monotonic() >= end:
                    break
                for _ in range(per_round):
                    client.request(payload, fid=echo_fid, timeout=timeout)
                gc.collect()
                samples.append(tracemalloc.get_traced_memory()[0])
                snap = tracemalloc.take_snapshot()
                first = snap if first is None else first
                last = snap
    except NexusError as exc:
        findings.append(
            Finding(
                check="memory",
                code="memory.failed",
                severity="warning",
                message=f"echo requests through function {echo_fid} failed after {len(samples)} round(s): {exc}",
                recommendation="check that the echo function exists and answers within the timeout",
            )
        )
    finally:
        if started_tracing:
            tracemalloc.stop()
    growth = samples[-1] - samples[0] if samples else 0
    steps = [b - a for a, b in zip(samples[:-1], samples[1:], strict=True)]
    suspected = len(samples) >= 3 and all(s > 0 for s in steps) and growth > threshold_bytes
    top: list[dict[str, Any]] = []
    if suspected and first is not None and last is not None:
        for stat in last.compare_to(first, "lineno")[:5]:
            if stat.size_diff > 0:
                frame = stat.traceback[0]
                top.append({"site": f"{frame.filename}:{frame.lineno}", "growth_bytes": stat.size_diff})
        where = f" (most at {top[0]['site']})" if top else ""
        findings.append(
            Finding(
                check="memory",
                code="memory.growing",
                severity="warning",
                message=f"memory grew in each of {len(steps)} rounds of {per_round} requests, "
                f"{growth} bytes in all, about {growth // (len(steps) * per_round)} bytes per request{where}",
                recommendation="something keeps a reference per request (a cache without a bound, a list of "
                "responses, a middleware): profile with nexus-green profile --memory",
            )
        )
    requests = max(1, (len(samples) - 1) * per_round)
    data = {
        "method": "tracemalloc",
        "rounds": len(samples),
        "per_round": per_round,
        "samples_bytes": samples,
        "growth_bytes": growth,
        "growth_per_request_bytes": round(growth / requests, 1),
        "leak_suspected": suspected,
        "top_growth": top,
        "rss_bytes": rss_bytes(),
    }
    return CheckResult(
        name="memory",
        status=status_of(findings),
        duration_ms=_ms(time.perf_counter() - t0),
        data=data,
        findings=tuple(findings),
    )
