"""Chaos suite (``make chaos``): fault-injection scenarios against the library, through real sockets.

Every scenario test gets the ``chaos`` fixture (a :class:`Harness`): it
starts an EmbeddedServer (with a counting ``FID_APPLY`` handler and an
idempotency guard), a :class:`~nexus_green.chaos.ChaosProxy` in front of it
and real Clients, runs a named scenario from
:data:`nexus_green.chaos.SCENARIOS` under a bounded load, and measures the
recovery: the time from the end of the fault to the first live success.
Around every test it checks that no greenlet, socket or file descriptor
leaked and that the hub never stalled for more than 50 ms
(:class:`~nexus_green.chaos.HubWatch`: the probe's lag less the time the OS
kept the process waiting for a core). The recovery times are printed at the
end of the run (and by each test).
"""

from __future__ import annotations

import gc
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Optional

import gevent
import gevent.pool
import pytest

from nexus_green import Client
from nexus_green.chaos import SCENARIOS, ChaosProxy, HubWatch, ScenarioRun
from nexus_green.greenlets import live_greenlets
from nexus_green.protocol.frames import Frame
from nexus_green.testing import EmbeddedServer

FID_APPLY = 40
RECOVERY_BOUND = 5.0
HUB_STALL_BOUND = 0.05
RESULTS: list[dict[str, Any]] = []


@dataclass
class Call:
    """One call of the load: when it ran, what it returned or raised."""

    start: float
    end: float
    value: Any = None
    error: Optional[BaseException] = None

    @property
    def duration(self) -> float:
        return self.end - self.start

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class Run:
    """What a scenario run produced: the calls, the schedule, and the measured recovery."""

    name: str
    scenario: ScenarioRun
    calls: list[Call] = field(default_factory=list)
    recovery: Optional[float] = None

    @property
    def fault_start(self) -> float:
        return self.scenario.windows[0][0]

    @property
    def fault_end(self) -> float:
        assert self.scenario.fault_end is not None
        return self.scenario.fault_end

    def during(self) -> list[Call]:
        """Calls that started while a fault was active."""
        return [c for c in self.calls if any(a <= c.start < b for a, b in self.scenario.windows)]

    def errors(self) -> Counter[str]:
        return Counter(type(c.error).__name__ for c in self.calls if c.error is not None)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def fd_targets() -> dict[str, str]:
    targets = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            targets[fd] = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # closed in between (the listing's own descriptor)
            pass
    return targets


class Harness:
    """Servers, proxies and clients for one test, closed at its end; runs scenarios and measures recovery."""

    def __init__(self, test_name: str) -> None:
        self.test_name = test_name
        self.applied: Counter[bytes] = Counter()
        self._closers: list[Callable[[], Any]] = []
        self.runs: list[Run] = []

    # ------------------------------------------------------------------ parts
    def _apply(self, frame: Frame) -> bytes:
        self.applied[frame.body] += 1
        return b"applied " + frame.body

    def server(self, **kw: Any) -> EmbeddedServer:
        kw.setdefault("idempotency", True)
        server = EmbeddedServer(handlers={FID_APPLY: self._apply}, **kw).start()
        self._closers.append(server.stop)
        return server

    def proxy(self, upstream: Any, **kw: Any) -> ChaosProxy:
        proxy = ChaosProxy(upstream, **kw).start()
        self._closers.append(proxy.close)
        return proxy

    def client(self, url: str, **kw: Any) -> Client:
        kw.setdefault("heartbeat_interval", None)
        client = Client(url, **kw)
        self._closers.append(client.close)
        return client

    def close(self) -> None:
        for closer in reversed(self._closers):
            closer()
        self._closers.clear()

    # ------------------------------------------------------------------ running
    def run(
        self,
        name: str,
        proxy: ChaosProxy,
        call: Callable[[int], Any],
        *,
        greenlets: int = 8,
        pace: float = 0.02,
        warmup: float = 0.5,
        max_calls: int = 3000,
        probe: Optional[Callable[[], bool]] = None,
        scale: float = 1.0,
    ) -> Run:
        """Load with ``greenlets`` loops of ``call(i)`` from ``warmup`` s before the scenario to its end.

        Then probe until the first live success (``probe()`` true; by default
        ``call`` returning without error) and record the recovery time. Every
        loop is bounded in calls (``max_calls`` in all) and in time.
        """
        scenario = SCENARIOS[name].scaled(scale)
        counter = iter(range(max_calls))
        calls: list[Call] = []
        stop_at = [time.monotonic() + warmup + scenario.duration + 30.0]  # a bound; moved to the real end below

        def loop() -> None:
            for i in counter:
                if time.monotonic() >= stop_at[0]:
                    return
                t0 = time.monotonic()
                try:
                    value = call(i)
                    calls.append(Call(t0, time.monotonic(), value=value))
                except Exception as exc:
                    # Without its traceback: frames kept alive by thousands of errors make cycles,
                    # and collecting them later is a pause on the hub that the test would measure.
                    calls.append(Call(t0, time.monotonic(), error=exc.with_traceback(None)))
                gevent.sleep(pace)

        pool = gevent.pool.Pool(greenlets)
        for _ in range(greenlets):
            pool.spawn(loop)
        gevent.sleep(warmup)
        sr = scenario.start(proxy.injector)
        try:
            assert sr.join(timeout=scenario.duration + 10.0), f"scenario {name} did not end"
        finally:
            sr.stop()
            stop_at[0] = time.monotonic()
        assert pool.join(timeout=15.0), "the load did not stop within 15 s of the scenario's end"
        run = Run(name, sr, calls)
        run.recovery = self.recover(run, probe or (lambda: self._probe_call(call)))
        self.runs.append(run)
        return run

    @staticmethod
    def _probe_call(call: Callable[[int], Any]) -> bool:
        try:
            call(10**9)
        except Exception:
            return False
        return True

    def recover(self, run: Run, probe: Callable[[], bool], limit: float = 2 * RECOVERY_BOUND) -> Optional[float]:
        """Seconds from the end of the fault to the first ``probe()`` that succeeds (None if none within limit)."""
        end = run.fault_end
        while time.monotonic() - end < limit:
            if probe():
                recovery = time.monotonic() - end
                RESULTS.append({"test": self.test_name, "scenario": run.name, "recovery": recovery})
                print(f"[chaos] {run.name}: first success {recovery:.3f} s after the fault ended")
                return recovery
            gevent.sleep(0.02)
        RESULTS.append({"test": self.test_name, "scenario": run.name, "recovery": None})
        return None


@pytest.fixture(autouse=True, scope="session")
def private_cache_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """``@cached`` keeps its L2 under ``$XDG_CACHE_HOME``: never the real user's cache (children inherit it)."""
    saved = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg-cache"))
    yield
    if saved is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = saved


@pytest.fixture
def chaos(request: pytest.FixtureRequest) -> Iterator[Harness]:
    """A :class:`Harness`; asserts no leaks and no hub stall over 50 ms around the test."""
    gevent.sleep(0)
    gc.collect()  # the garbage of earlier tests is not this test's pause
    gc_pauses: list[float] = []
    gc_start: list[float] = [0.0]

    def on_gc(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            gc_start[0] = time.perf_counter()
        else:
            gc_pauses.append(time.perf_counter() - gc_start[0])

    gc.callbacks.append(on_gc)
    fds_before = open_fds()
    targets_before = fd_targets()
    greenlets_before = set(live_greenlets())
    harness = Harness(request.node.name)
    watch = HubWatch(interval=0.005).start()
    try:
        yield harness
    finally:
        harness.close()
        watch.stop()
        gc.callbacks.remove(on_gc)
    gc.collect()  # what the test dropped (a decorated function's disk cache) is released with it
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        leaked = set(live_greenlets()) - greenlets_before
        if not leaked and open_fds() <= fds_before:
            break
        gevent.sleep(0.02)
    leaked = set(live_greenlets()) - greenlets_before
    assert not leaked, f"greenlets leaked: {sorted(g.name for g in leaked)}"
    new = {fd: t for fd, t in fd_targets().items() if targets_before.get(fd) != t}
    assert open_fds() <= fds_before, f"fds leaked: {fds_before} -> {open_fds()}: {new}"
    print(f"[chaos] {request.node.name}: {watch!r}, worst GC pause {max(gc_pauses, default=0) * 1000:.1f} ms")
    for row in RESULTS:
        if row["test"] == request.node.name:
            row["hub_stall"] = watch.worst_stall
            row["hub_lag"] = watch.worst_lag
    when = "; ".join(
        f"{run.name} ran {run.scenario.started_at - watch.worst_stall_at:+.3f} s after it" for run in harness.runs
    )
    assert watch.worst_stall <= HUB_STALL_BOUND, f"the hub stalled: {watch!r} (the scenario {when})"


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not RESULTS:
        return
    tr = terminalreporter
    tr.section("chaos: recovery after the fault ended (bound 5 s)")
    tr.write_line(f"{'scenario':<24} {'test':<58} {'recovery':>9} {'hub stall':>10} {'hub lag':>8}")
    for row in RESULTS:
        rec = "NONE" if row["recovery"] is None else f"{row['recovery']:.3f} s"
        stall = f"{row.get('hub_stall', 0) * 1000:.1f} ms"
        lag = f"{row.get('hub_lag', 0) * 1000:.0f} ms"
        tr.write_line(f"{row['scenario']:<24} {row['test']:<58} {rec:>9} {stall:>10} {lag:>8}")
