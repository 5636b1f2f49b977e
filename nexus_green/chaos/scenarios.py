"""ChaosScenarios: named combinations of faults on a schedule, and the library of them.

A :class:`ChaosScenario` is a name, a description, what a well-configured
client should show (``expect``), and :class:`Step` s: at ``at`` seconds
from the start, activate ``faults`` (on a
:class:`~nexus_green.chaos.faults.FaultInjector`) and enter ``resources``
(:mod:`~nexus_green.chaos.resources` factories) for ``duration`` seconds.
:meth:`ChaosScenario.start` runs the schedule in a greenlet and returns a
:class:`ScenarioRun` that records when each fault window opened and closed;
``fault_end`` is the moment the last one closed, the start of the recovery
clock. :meth:`ChaosScenario.scaled` shortens or stretches every time.

:data:`SCENARIOS` holds the library (docs/chaos.md has the table).

Example::

    >>> from nexus_green.chaos.faults import FaultInjector
    >>> inj = FaultInjector()
    >>> run = SCENARIOS["error-storm"].scaled(0.01).start(inj)
    >>> run.join(timeout=5)
    True
    >>> len(run.windows), inj.faults(), run.fault_end >= run.started_at
    (1, [], True)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any, Optional

import gevent

from ..greenlets import spawn
from .faults import (
    Fault,
    FaultInjector,
    blackhole,
    close,
    drop,
    duplicate,
    error,
    half_open,
    latency,
    partial_failure,
    push_flood,
    reorder,
    reset,
    service_down,
    slice_writes,
    slow_response,
    stop_reading,
    throttle,
)
from .resources import CpuSaturation, FdExhaustion, MemoryPressure, ResourceFault

__all__ = ["Step", "ChaosScenario", "ScenarioRun", "SCENARIOS", "scenario"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Step:
    """At ``at`` seconds, activate ``faults`` and enter ``resources`` (factories) for ``duration`` seconds.

    >>> Step(at=1, duration=2, faults=(drop(),)).end
    3
    """

    at: float = 0.0
    duration: float
    faults: tuple[Fault, ...] = ()
    resources: tuple[Callable[[], ResourceFault], ...] = ()

    def __post_init__(self) -> None:
        if self.at < 0 or self.duration <= 0:
            raise ValueError(f"a step needs at >= 0 and duration > 0, got at={self.at}, duration={self.duration}")

    @property
    def end(self) -> float:
        """Seconds from the start of the scenario when this step ends."""
        return self.at + self.duration


@dataclass(frozen=True, slots=True, kw_only=True)
class ChaosScenario:
    """A named schedule of faults; see the module docstring.

    >>> s = ChaosScenario(name="x", description="d", expect="e", steps=(Step(duration=2.0, faults=(drop(),)),))
    >>> s.duration, s.scaled(0.5).duration
    (2.0, 1.0)
    """

    name: str
    description: str
    expect: str
    steps: tuple[Step, ...]
    tags: frozenset[str] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        if not self.steps:
            raise ValueError(f"scenario {self.name!r} has no steps")

    @property
    def duration(self) -> float:
        """Seconds from the start to the end of the last step."""
        return max(step.end for step in self.steps)

    def faults(self) -> Iterator[Fault]:
        """Every fault of every step."""
        for step in self.steps:
            yield from step.faults

    def scaled(self, factor: float) -> ChaosScenario:
        """The same scenario with every time (step start and length) multiplied by ``factor``."""
        if factor <= 0:
            raise ValueError(f"factor must be positive, got {factor!r}")
        steps = tuple(replace(s, at=s.at * factor, duration=s.duration * factor) for s in self.steps)
        return replace(self, steps=steps)

    def start(self, injector: FaultInjector) -> ScenarioRun:
        """Run the schedule in a greenlet against ``injector``; returns the :class:`ScenarioRun`."""
        return ScenarioRun(self, injector).start()

    def run(self, injector: FaultInjector, *, timeout: Optional[float] = None) -> ScenarioRun:
        """Run the schedule and wait for its end (at most ``timeout``, default duration + 10 s)."""
        run = self.start(injector)
        if not run.join(timeout=self.duration + 10.0 if timeout is None else timeout):
            run.stop()
            raise TimeoutError(f"scenario {self.name!r} did not finish within its timeout")
        return run


class ScenarioRun:
    """A running (or finished) scenario: ``windows`` of ``(start, end)`` monotonic times, one per step.

    ``fault_end`` is when the last fault was removed (None while running);
    ``resources`` every resource fault it started (released by then).
    :meth:`stop` ends it early and removes everything it added.
    """

    def __init__(self, scenario: ChaosScenario, injector: FaultInjector) -> None:
        self.scenario = scenario
        self.injector = injector
        self.started_at = 0.0
        self.windows: list[tuple[float, float]] = []
        self.fault_end: Optional[float] = None
        self._greenlet: Optional[gevent.Greenlet] = None
        self._ids: list[int] = []
        self._resources: list[ResourceFault] = []
        self.resources: list[ResourceFault] = []

    def start(self) -> ScenarioRun:
        self.started_at = time.monotonic()
        self._greenlet = spawn(self._run, name=f"chaos.scenario.{self.scenario.name}")
        return self

    def _run(self) -> None:
        try:
            for step in sorted(self.scenario.steps, key=lambda s: s.at):
                gevent.sleep(max(0.0, self.started_at + step.at - time.monotonic()))
                begin = time.monotonic()
                self._ids = [self.injector.add(f) for f in step.faults]
                self._resources = [make() for make in step.resources]
                self.resources.extend(self._resources)
                for res in self._resources:
                    res.start()
                gevent.sleep(max(0.0, begin + step.duration - time.monotonic()))
                self._undo()
                self.windows.append((begin, time.monotonic()))
        finally:
            self._undo()
            self.fault_end = time.monotonic()

    def _undo(self) -> None:
        ids, self._ids = self._ids, []
        for fault_id in ids:
            self.injector.remove(fault_id)
        resources, self._resources = self._resources, []
        for res in resources:
            res.stop()

    @property
    def running(self) -> bool:
        """True until the schedule ended (or was stopped)."""
        return self._greenlet is not None and not self._greenlet.dead

    def join(self, timeout: Optional[float] = None) -> bool:
        """Wait for the end of the schedule; True if it ended."""
        assert self._greenlet is not None
        self._greenlet.join(timeout=timeout)
        return self._greenlet.dead

    def stop(self) -> None:
        """End now: remove the faults and release the resources (idempotent)."""
        if self._greenlet is not None:
            self._greenlet.kill(block=True, timeout=5)

    def __enter__(self) -> ScenarioRun:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "done"
        return f"<ScenarioRun {self.scenario.name} {state} windows={len(self.windows)}>"


def scenario(name: str, description: str, expect: str, *steps: Step, tags: tuple[str, ...] = ()) -> ChaosScenario:
    """Build a :class:`ChaosScenario` (positional steps).

    >>> scenario("n", "d", "e", Step(duration=1)).name
    'n'
    """
    return ChaosScenario(name=name, description=description, expect=expect, steps=steps, tags=frozenset(tags))


def _cpu() -> ResourceFault:
    return CpuSaturation(duty=0.8, period=0.05, threads=2)


def _memory() -> ResourceFault:
    return MemoryPressure(64)


def _fds() -> ResourceFault:
    return FdExhaustion(leave=32)


_LIBRARY = [
    scenario(
        "error-storm",
        "80% of requests are answered 503 by the proxy for 3 s, then healthy.",
        "the circuit breaker opens, the fallback serves, the client recovers within 5 s of the end",
        Step(duration=3.0, faults=(error(code=503, probability=0.8, seed=1),)),
        tags=("service",),
    ),
    scenario(
        "partial-outage",
        "30% of requests fail with 503 for 3 s (a fraction of the backend is broken).",
        "idempotent calls are retried, never beyond the retry budget",
        Step(duration=3.0, faults=(partial_failure(0.3, code=503, seed=2),)),
        tags=("service",),
    ),
    scenario(
        "lost-responses",
        "30% of responses are dropped on the way back for 3 s.",
        "idempotent calls time out and retry with one idempotency key: applied once, never lost",
        Step(duration=3.0, faults=(drop(direction="downstream", probability=0.3, seed=3),)),
        tags=("network",),
    ),
    scenario(
        "lost-requests",
        "30% of requests are dropped on the way out for 3 s.",
        "timeouts fire within their bound; idempotent calls retry and are applied once",
        Step(duration=3.0, faults=(drop(direction="upstream", probability=0.3, seed=4),)),
        tags=("network",),
    ),
    scenario(
        "slow-backend",
        "every response is held 0.5 s for 3 s.",
        "calls with a 0.2 s timeout raise RequestTimeout within the bound; the link survives",
        Step(duration=3.0, faults=(slow_response(0.5),)),
        tags=("service",),
    ),
    scenario(
        "jittery-network",
        "20 ms +/- 15 ms of latency each way for 3 s.",
        "every call succeeds, slower; nothing is retried",
        Step(duration=3.0, faults=(latency(0.02, jitter=0.015, seed=5),)),
        tags=("network",),
    ),
    scenario(
        "connection-drops",
        "10% of requests make the proxy close the connection (FIN) instead of forwarding, for 3 s.",
        "non-idempotent calls that may have been sent are never resent; the pool reconnects",
        Step(duration=3.0, faults=(close(probability=0.1, seed=6),)),
        tags=("network",),
    ),
    scenario(
        "connection-resets",
        "10% of requests make the proxy reset the connection (RST), for 3 s.",
        "like connection-drops, with ConnectionResetError underneath",
        Step(duration=3.0, faults=(reset(probability=0.1, seed=7),)),
        tags=("network",),
    ),
    scenario(
        "half-open",
        "for 2 s every link freezes: up, but nothing passes, for good.",
        "heartbeats detect the dead link and the pool replaces it; new links work after the fault",
        Step(duration=2.0, faults=(half_open(),)),
        tags=("network",),
    ),
    scenario(
        "blackhole",
        "for 2 s the service accepts and answers nothing (heartbeats too).",
        "every call times out within its bound; calls succeed again once it answers",
        Step(duration=2.0, faults=(blackhole(),)),
        tags=("service",),
    ),
    scenario(
        "service-down",
        "for 3 s connections are refused and open links are cut.",
        "calls fail fast (refused: not sent, so even non-idempotent calls may retry); recovery within 5 s",
        Step(duration=3.0, faults=(service_down(),)),
        tags=("service",),
    ),
    scenario(
        "reorder-and-duplicate",
        "30% of responses are reordered and 20% duplicated for 3 s.",
        "every call gets its own answer (by Qid); a duplicate reply is ignored",
        Step(
            duration=3.0,
            faults=(
                reorder(direction="downstream", probability=0.3, seed=8),
                duplicate(direction="downstream", probability=0.2, seed=9),
            ),
        ),
        tags=("network",),
    ),
    scenario(
        "duplicate-requests",
        "the proxy sends 30% of requests twice for 3 s (the client sent each once).",
        "with the server's idempotency guard each request is applied once; the proxy counts one send",
        Step(duration=3.0, faults=(duplicate(direction="upstream", probability=0.3, seed=10),)),
        tags=("network",),
    ),
    scenario(
        "narrow-pipe",
        "for 3 s traffic is throttled to 20 kB/s and written in 7-byte slices 1 ms apart.",
        "the decoder reassembles sliced frames; calls succeed, slower",
        Step(duration=3.0, faults=(throttle(20_000), slice_writes(7, 0.001))),
        tags=("network",),
    ),
    scenario(
        "stalled-server",
        "for 2 s the server stops reading requests (its receive buffer fills).",
        "calls time out within their bound; nothing is lost once reading resumes",
        Step(duration=2.0, faults=(stop_reading(direction="upstream"),)),
        tags=("service",),
    ),
    scenario(
        "push-flood",
        "for 3 s, before 20% of responses the proxy sends 500 unsolicited pushes.",
        "the push queue stays bounded (oldest dropped), the hub keeps running, calls succeed",
        Step(duration=3.0, faults=(push_flood(500, probability=0.2, seed=11),)),
        tags=("service",),
    ),
    scenario(
        "cpu-saturation",
        "for 3 s two native threads keep both cores 80% busy, with 5 ms of latency.",
        "calls succeed; the hub is not stalled by the busy threads",
        Step(duration=3.0, faults=(latency(0.005),), resources=(_cpu,)),
        tags=("resource",),
    ),
    scenario(
        "resource-squeeze",
        "for 3 s 64 MB are held and only 32 file descriptors are left free.",
        "open connections keep working; everything is given back at the end",
        Step(duration=3.0, resources=(_memory, _fds)),
        tags=("resource",),
    ),
    scenario(
        "flapping",
        "errors (80%) for 1 s, healthy for 1 s, refused for 1 s, then healthy.",
        "the breaker opens and closes again; recovery within 5 s of the last fault",
        Step(at=0.0, duration=1.0, faults=(error(probability=0.8, seed=12),)),
        Step(at=2.0, duration=1.0, faults=(service_down(),)),
        tags=("service",),
    ),
]

SCENARIOS: dict[str, ChaosScenario] = {s.name: s for s in _LIBRARY}
"""The scenario library by name (docs/chaos.md has the table)."""


def describe_all() -> list[dict[str, Any]]:
    """The library as rows: name, duration, faults, description, expect (for the CLI and the docs).

    >>> len(describe_all()) >= 12
    True
    """
    return [
        {
            "name": s.name,
            "duration": s.duration,
            "faults": [f.describe() for f in s.faults()],
            "resources": [make().describe() for step in s.steps for make in step.resources],
            "description": s.description,
            "expect": s.expect,
        }
        for s in SCENARIOS.values()
    ]
