"""Faults and the injector that decides them: what the chaos proxy does to each frame (no I/O here).

A :class:`Fault` is a frozen description: a ``kind``, a ``direction``
(``"upstream"``: client to server, ``"downstream"``: server to client, or
``"both"``), a ``probability``, an optional predicate (``fid``, ``qid``, or a
``match`` callable on the :class:`~nexus_green.protocol.frames.Frame`) and a
``seed``. The :class:`FaultInjector` holds the active faults; for every frame
the proxy asks it :meth:`FaultInjector.decide`, which draws from each fault's
own ``random.Random(seed)``. The same traffic with the same seeds gets the
same decisions, so a failing run replays exactly; :attr:`FaultInjector.log`
records each decision (fault id, direction, qid, fid, action).

Frame faults (decided per frame): ``latency``, ``slow_response``, ``drop``,
``reorder``, ``duplicate``, ``close``, ``reset``, ``error``, ``push_flood``,
``blackhole``. Stream faults (applied by the proxy's writers and readers):
``throttle``, ``slice``, ``stop_reading``. Link faults: ``half_open`` (a link
it touches freezes for good), ``service_down`` (connections refused).
Heartbeats pass untouched by frame faults unless ``heartbeats=True``; the
blackhole and half-open swallow them too (a hung peer answers nothing).

Example::

    >>> from nexus_green.protocol.frames import Frame
    >>> inj = FaultInjector()
    >>> fid_id = inj.add(error(code=503, fid=3, probability=1.0))
    >>> [a.kind for a in inj.decide("upstream", Frame(qid=1, fid=3))]
    ['error']
    >>> inj.decide("upstream", Frame(qid=2, fid=1))
    []
    >>> inj.remove(fid_id), inj.faults()
    (True, [])
"""

from __future__ import annotations

import random
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Optional, Union

from gevent.event import Event

from ..protocol.frames import Frame

__all__ = [
    "DIRECTIONS",
    "KINDS",
    "Fault",
    "Action",
    "FaultInjector",
    "Decision",
    "latency",
    "slow_response",
    "drop",
    "reorder",
    "duplicate",
    "close",
    "reset",
    "half_open",
    "throttle",
    "slice_writes",
    "blackhole",
    "error",
    "partial_failure",
    "service_down",
    "stop_reading",
    "push_flood",
    "fault_from_dict",
]

DIRECTIONS = ("upstream", "downstream", "both")

# kind -> (what it does, the parameters it takes)
KINDS: dict[str, tuple[str, tuple[str, ...]]] = {
    "latency": ("delay each frame by delay +/- jitter seconds (order kept)", ("delay", "jitter")),
    "slow_response": ("delay responses by delay +/- jitter seconds", ("delay", "jitter")),
    "drop": ("drop the frame silently", ()),
    "reorder": ("hold the frame and send it after the next one (or after hold seconds)", ("hold",)),
    "duplicate": ("send the frame twice", ()),
    "close": ("close the connection (FIN) instead of forwarding the frame", ()),
    "reset": ("reset the connection (RST) instead of forwarding the frame", ()),
    "half_open": ("freeze the link for good: nothing read, nothing sent, the sockets stay open", ()),
    "throttle": ("forward at most rate bytes per second", ("rate",)),
    "slice": ("write in chunks of chunk bytes with chunk_delay seconds between them", ("chunk", "chunk_delay")),
    "blackhole": ("swallow every frame, heartbeats too: accepts and never answers", ()),
    "error": ("answer the request with an error code instead of forwarding it", ("code",)),
    "service_down": ("refuse connections (and cut the open ones)", ()),
    "stop_reading": ("stop reading from the sender: its writes back up", ()),
    "push_flood": ("send count push frames (Res 0, Qid 0) to the client before the frame", ("count",)),
}
_LINK_KINDS = {"half_open", "service_down"}
_STREAM_KINDS = {"throttle", "slice", "stop_reading"}
_ALWAYS_HEARTBEATS = {"blackhole", "half_open"}
_UPSTREAM_ONLY = {"error"}
_DOWNSTREAM_ONLY = {"slow_response", "push_flood"}


@dataclass(frozen=True, slots=True, kw_only=True)
class Fault:
    """One fault: ``kind`` (see :data:`KINDS`), where it acts, how often, on which frames, and its parameters.

    ``direction`` is ``"upstream"`` (client to server), ``"downstream"`` or
    ``"both"``. ``probability`` (0..1) is drawn per matching frame from
    ``random.Random(seed)``. ``fid`` / ``qid`` (an int or a set of ints) and
    ``match`` (a callable on the Frame) restrict the frames; all must hold.
    ``heartbeats=True`` lets a frame fault act on heartbeats too. Parameters
    not used by the kind are ignored (``KINDS[kind][1]`` names the used ones).

    Example::

        >>> Fault(kind="drop", direction="downstream", probability=0.2, seed=7).describe()
        'drop downstream p=0.2 seed=7'
        >>> Fault(kind="nope")
        Traceback (most recent call last):
        ...
        ValueError: unknown fault kind 'nope'; one of: latency, slow_response, drop, ...
    """

    kind: str
    direction: str = "both"
    probability: float = 1.0
    fid: Union[int, frozenset[int], None] = None
    qid: Union[int, frozenset[int], None] = None
    match: Optional[Callable[[Frame], bool]] = field(default=None, compare=False)
    seed: int = 0
    heartbeats: bool = False
    delay: float = 0.0
    jitter: float = 0.0
    hold: float = 0.05
    code: int = 503
    rate: float = 0.0
    chunk: int = 1
    chunk_delay: float = 0.0
    count: int = 100
    name: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(
                f"unknown fault kind {self.kind!r}; one of: {', '.join(list(KINDS)[:3])}, ... ({', '.join(KINDS)})"
            )
        if self.direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}, got {self.direction!r}")
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError(f"probability must be within 0..1, got {self.probability!r}")
        for name in ("delay", "jitter", "hold", "chunk_delay", "rate"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative, got {getattr(self, name)!r}")
        if self.kind == "throttle" and not self.rate > 0:
            raise ValueError("a throttle needs rate > 0 (bytes per second)")
        if self.chunk < 1 or self.count < 0 or not 100 <= self.code <= 0xFFFFFFFF:
            raise ValueError(f"chunk must be >= 1, count >= 0 and code a status code: {self!r}")
        for name in ("fid", "qid"):
            value = getattr(self, name)
            if isinstance(value, (set, list, tuple)):
                object.__setattr__(self, name, frozenset(value))

    @property
    def upstream(self) -> bool:
        """True if the fault acts on client-to-server traffic.

        >>> drop(direction="upstream").upstream, drop(direction="downstream").upstream
        (True, False)
        """
        return self.direction in ("upstream", "both")

    @property
    def downstream(self) -> bool:
        """True if the fault acts on server-to-client traffic.

        >>> drop().downstream
        True
        """
        return self.direction in ("downstream", "both")

    def acts_on(self, direction: str) -> bool:
        """True if the fault acts in ``direction`` (``"upstream"`` or ``"downstream"``).

        >>> error().acts_on("upstream"), error().acts_on("downstream")
        (True, False)
        """
        return self.direction == "both" or self.direction == direction

    def matches(self, frame: Frame) -> bool:
        """True if ``frame`` satisfies the predicate (fid, qid, match, heartbeats).

        Example::

            >>> f = Fault(kind="drop", fid={1, 2})
            >>> f.matches(Frame(fid=2)), f.matches(Frame(fid=3)), Fault(kind="drop").matches(Frame(tp=1))
            (True, False, False)
        """
        if frame.tp & 0x01 and not (self.heartbeats or self.kind in _ALWAYS_HEARTBEATS):
            return False
        if self.kind in _UPSTREAM_ONLY and (frame.res or frame.tp & 0x01):
            return False  # only requests get an error answer
        if self.kind == "slow_response" and not frame.res:
            return False
        return (
            _member(frame.fid, self.fid) and _member(frame.qid, self.qid) and (self.match is None or self.match(frame))
        )

    def describe(self) -> str:
        """One line: kind, direction, probability, seed, predicate and the parameters it uses.

        >>> throttle(5000, fid=2).describe()
        'throttle both p=1 seed=0 fid=2 rate=5000'
        """
        parts = [self.kind, self.direction, f"p={self.probability:g}", f"seed={self.seed}"]
        for name in ("fid", "qid"):
            value = getattr(self, name)
            if value is not None:
                parts.append(f"{name}={sorted(value) if isinstance(value, frozenset) else value}")
        parts.extend(f"{p}={getattr(self, p):g}" for p in KINDS[self.kind][1])
        return " ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """The fault as JSON-ready data (``match`` is left out); :func:`fault_from_dict` reads it back.

        Example::

            >>> fault_from_dict(drop(seed=3).to_dict()) == drop(seed=3)
            True
        """
        d = asdict(self)
        d.pop("match")
        for name in ("fid", "qid"):
            if isinstance(d[name], frozenset):
                d[name] = sorted(d[name])
        return d


def _member(value: int, wanted: Union[int, frozenset[int], None]) -> bool:
    if wanted is None:
        return True
    if isinstance(wanted, frozenset):
        return value in wanted
    return value == wanted


def fault_from_dict(data: dict[str, Any]) -> Fault:
    """Build a :class:`Fault` from JSON data (what the control API and the CLI take).

    Unknown keys are refused with a ``ValueError`` that names them.

    Example::

        >>> fault_from_dict({"kind": "latency", "delay": 0.1, "direction": "downstream"}).describe()
        'latency downstream p=1 seed=0 delay=0.1 jitter=0'
        >>> fault_from_dict({"kind": "drop", "colour": "red"})
        Traceback (most recent call last):
        ...
        ValueError: unknown fault field(s): colour
    """
    if not isinstance(data, dict):
        raise ValueError(f"a fault is a JSON object, got {type(data).__name__}")
    known = set(Fault.__dataclass_fields__) - {"match"}
    unknown = set(data) - known
    if unknown:
        raise ValueError(f"unknown fault field(s): {', '.join(sorted(unknown))}")
    if "kind" not in data:
        raise ValueError("a fault needs a 'kind'")
    return Fault(**data)


# ---------------------------------------------------------------------- constructors
def latency(delay: float, *, jitter: float = 0.0, direction: str = "both", **kw: Any) -> Fault:
    """Delay every matching frame by ``delay`` seconds plus ``uniform(-jitter, jitter)``; order is kept.

    Example: ``latency(0.02, jitter=0.01, direction="downstream")``.

        >>> latency(0.02, jitter=0.01).kind
        'latency'
    """
    return Fault(kind="latency", delay=delay, jitter=jitter, direction=direction, **kw)


def slow_response(delay: float, *, jitter: float = 0.0, **kw: Any) -> Fault:
    """Hold each response ``delay`` seconds (+/- ``jitter``) on its way to the client: a slow service.

    >>> slow_response(0.3).direction
    'downstream'
    """
    return Fault(kind="slow_response", delay=delay, jitter=jitter, direction="downstream", **kw)


def drop(*, direction: str = "both", probability: float = 1.0, **kw: Any) -> Fault:
    """Drop matching frames silently (frame loss).

    >>> drop(probability=0.1).probability
    0.1
    """
    return Fault(kind="drop", direction=direction, probability=probability, **kw)


def reorder(*, direction: str = "downstream", probability: float = 1.0, hold: float = 0.05, **kw: Any) -> Fault:
    """Hold a matching frame back and send it after the next frame (or after ``hold`` seconds).

    >>> reorder(probability=0.5).hold
    0.05
    """
    return Fault(kind="reorder", direction=direction, probability=probability, hold=hold, **kw)


def duplicate(*, direction: str = "both", probability: float = 1.0, **kw: Any) -> Fault:
    """Send matching frames twice (the proxy counts what the client really sent).

    >>> duplicate(direction="upstream").direction
    'upstream'
    """
    return Fault(kind="duplicate", direction=direction, probability=probability, **kw)


def close(*, direction: str = "upstream", probability: float = 1.0, **kw: Any) -> Fault:
    """Close the link (FIN both ways) when a matching frame arrives, instead of forwarding it.

    >>> close(probability=0.1).kind
    'close'
    """
    return Fault(kind="close", direction=direction, probability=probability, **kw)


def reset(*, direction: str = "upstream", probability: float = 1.0, **kw: Any) -> Fault:
    """Reset the link (RST both ways) when a matching frame arrives, instead of forwarding it.

    >>> reset().kind
    'reset'
    """
    return Fault(kind="reset", direction=direction, probability=probability, **kw)


def half_open(**kw: Any) -> Fault:
    """Freeze every link open now or opened while active: nothing passes, nothing closes, ever.

    >>> half_open().kind
    'half_open'
    """
    return Fault(kind="half_open", **kw)


def throttle(rate: float, *, direction: str = "both", **kw: Any) -> Fault:
    """Forward at most ``rate`` bytes per second in ``direction``.

    >>> throttle(20_000).rate
    20000
    """
    return Fault(kind="throttle", rate=rate, direction=direction, **kw)


def slice_writes(chunk: int = 1, chunk_delay: float = 0.001, *, direction: str = "both", **kw: Any) -> Fault:
    """Write in chunks of ``chunk`` bytes with ``chunk_delay`` seconds between them (exercises decoders).

    >>> slice_writes(3).chunk
    3
    """
    return Fault(kind="slice", chunk=chunk, chunk_delay=chunk_delay, direction=direction, **kw)


def blackhole(**kw: Any) -> Fault:
    """Accept, read and answer nothing: every frame (heartbeats too) is swallowed; a service timeout.

    >>> blackhole(fid=9).fid
    9
    """
    return Fault(kind="blackhole", **kw)


def error(*, code: int = 503, probability: float = 1.0, **kw: Any) -> Fault:
    """The proxy answers a matching request with ``code`` itself; the server never sees it.

    >>> error(code=500).code
    500
    """
    return Fault(kind="error", code=code, probability=probability, direction="upstream", **kw)


def partial_failure(fraction: float, *, code: int = 500, **kw: Any) -> Fault:
    """A ``fraction`` of the matching requests fail with ``code`` (seeded draws; exact over many requests).

    >>> partial_failure(0.8).probability
    0.8
    """
    return error(code=code, probability=fraction, **kw)


def service_down(**kw: Any) -> Fault:
    """Connections are refused (the proxy stops listening, its port held) and open links are cut.

    >>> service_down().kind
    'service_down'
    """
    return Fault(kind="service_down", **kw)


def stop_reading(*, direction: str = "upstream", **kw: Any) -> Fault:
    """Stop reading what the sender writes (``upstream``: a server that stops reading requests).

    >>> stop_reading().direction
    'upstream'
    """
    return Fault(kind="stop_reading", direction=direction, **kw)


def push_flood(count: int = 1000, *, probability: float = 1.0, **kw: Any) -> Fault:
    """Before a matching response, send ``count`` unsolicited push frames to the client.

    >>> push_flood(50).count
    50
    """
    return Fault(kind="push_flood", count=count, probability=probability, direction="downstream", **kw)


# ---------------------------------------------------------------------- decisions
@dataclass(frozen=True, slots=True)
class Action:
    """What the proxy does to one frame for one fault: ``kind``, the fault's id, and its figures.

    >>> Action("latency", 1, delay=0.25)
    Action(kind='latency', fault_id=1, delay=0.25, code=0, count=0, hold=0.0)
    """

    kind: str
    fault_id: int
    delay: float = 0.0
    code: int = 0
    count: int = 0
    hold: float = 0.0


@dataclass(frozen=True, slots=True)
class Decision:
    """One logged decision: when (monotonic), which fault, the frame's direction, Qid and Fid, and the action."""

    at: float
    fault_id: int
    direction: str
    qid: int
    fid: int
    action: str


class _Active:
    __slots__ = ("id", "fault", "rng", "applied", "added_at")

    def __init__(self, fault_id: int, fault: Fault) -> None:
        self.id = fault_id
        self.fault = fault
        self.rng = random.Random(fault.seed)
        self.applied = 0
        self.added_at = time.monotonic()


class FaultInjector:
    """The set of active faults, changed at run time; the proxy asks it what to do with each frame.

    :meth:`add` returns an id for :meth:`remove`; :meth:`injected` is a
    context manager that removes the fault on exit. Listeners registered
    with :meth:`on_change` run after every change (the proxy uses it for the
    link faults). ``log`` keeps the last ``log_size`` decisions.

    Example::

        >>> inj = FaultInjector()
        >>> with inj.injected(drop(probability=0.5, seed=1)) as fid:
        ...     [bool(inj.decide("upstream", Frame(qid=q))) for q in range(6)]
        [True, False, False, True, True, True]
        >>> inj.faults(), len(inj.log)
        ([], 4)
    """

    def __init__(self, *, log_size: int = 10_000) -> None:
        self._active: dict[int, _Active] = {}
        self._next_id = 1
        self._listeners: list[Callable[[], None]] = []
        self.log: deque[Decision] = deque(maxlen=log_size)
        self.changed = Event()  # set (and replaced) at each change: a waiting reader wakes
        self.history: list[tuple[float, str, int, str]] = []  # (monotonic, "added"/"removed", id, describe)

    # ------------------------------------------------------------------ control
    def add(self, fault: Fault) -> int:
        """Activate ``fault``; returns its id.

        >>> inj = FaultInjector(); inj.add(drop()), inj.add(latency(0.1))
        (1, 2)
        """
        if not isinstance(fault, Fault):
            raise TypeError(f"FaultInjector.add takes a Fault, not {fault!r}")
        fault_id, self._next_id = self._next_id, self._next_id + 1
        self._active[fault_id] = _Active(fault_id, fault)
        self.history.append((time.monotonic(), "added", fault_id, fault.describe()))
        self._changed()
        return fault_id

    def remove(self, fault_id: int) -> bool:
        """Deactivate the fault; False if no fault has that id.

        >>> inj = FaultInjector(); fid = inj.add(drop())
        >>> inj.remove(fid), inj.remove(fid)
        (True, False)
        """
        active = self._active.pop(fault_id, None)
        if active is None:
            return False
        self.history.append((time.monotonic(), "removed", fault_id, active.fault.describe()))
        self._changed()
        return True

    def clear(self) -> int:
        """Deactivate every fault; returns how many there were.

        >>> inj = FaultInjector(); _ = inj.add(drop()); _ = inj.add(reset())
        >>> inj.clear(), inj.faults()
        (2, [])
        """
        ids = list(self._active)
        for fault_id in ids:
            self.remove(fault_id)
        return len(ids)

    @contextmanager
    def injected(self, fault: Fault) -> Iterator[int]:
        """``with injector.injected(fault) as fault_id:`` the fault is active inside the block only."""
        fault_id = self.add(fault)
        try:
            yield fault_id
        finally:
            self.remove(fault_id)

    def on_change(self, listener: Callable[[], None]) -> Callable[[], None]:
        """Call ``listener()`` after every add/remove; returns a function that unsubscribes.

        >>> inj, calls = FaultInjector(), []
        >>> off = inj.on_change(lambda: calls.append(len(inj.faults())))
        >>> _ = inj.add(drop()); off(); _ = inj.add(drop())
        >>> calls
        [1]
        """
        self._listeners.append(listener)

        def off() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return off

    def _changed(self) -> None:
        changed, self.changed = self.changed, Event()
        changed.set()
        for listener in list(self._listeners):
            listener()

    # ------------------------------------------------------------------ queries
    def faults(self) -> list[tuple[int, Fault]]:
        """The active faults as ``(id, fault)``, oldest first.

        >>> inj = FaultInjector(); _ = inj.add(drop())
        >>> [(i, f.kind) for i, f in inj.faults()]
        [(1, 'drop')]
        """
        return [(a.id, a.fault) for a in self._active.values()]

    def figures(self) -> list[dict[str, Any]]:
        """The active faults as JSON-ready data: id, description, how often applied, and the fault's fields.

        >>> inj = FaultInjector(); _ = inj.add(drop(seed=2))
        >>> [(f["id"], f["describe"], f["applied"]) for f in inj.figures()]
        [(1, 'drop both p=1 seed=2', 0)]
        """
        return [
            {"id": a.id, "describe": a.fault.describe(), "applied": a.applied, "fault": a.fault.to_dict()}
            for a in self._active.values()
        ]

    def active(self, kind: str, direction: Optional[str] = None) -> list[Fault]:
        """The active faults of ``kind`` (acting in ``direction`` when given).

        >>> inj = FaultInjector(); _ = inj.add(throttle(10, direction="upstream"))
        >>> len(inj.active("throttle")), len(inj.active("throttle", "downstream"))
        (1, 0)
        """
        return [
            a.fault
            for a in self._active.values()
            if a.fault.kind == kind and (direction is None or a.fault.acts_on(direction))
        ]

    def link_frozen(self) -> bool:
        """True while a half-open fault is active (links it touches freeze).

        >>> inj = FaultInjector(); _ = inj.add(half_open()); inj.link_frozen()
        True
        """
        return bool(self.active("half_open"))

    def down(self) -> bool:
        """True while a service-down fault is active.

        >>> FaultInjector().down()
        False
        """
        return bool(self.active("service_down"))

    # ------------------------------------------------------------------ decisions
    def decide(self, direction: str, frame: Frame) -> list[Action]:
        """The actions for ``frame`` travelling in ``direction``, one per fault that fires, in order added.

        Stream and link faults never appear here (the proxy applies them).
        Each matching fault draws once from its own seeded random source.

            >>> inj = FaultInjector(); _ = inj.add(latency(0.1)); _ = inj.add(duplicate())
            >>> [(a.kind, a.delay) for a in inj.decide("downstream", Frame(qid=3, res=1))]
            [('latency', 0.1), ('duplicate', 0.0)]
        """
        actions: list[Action] = []
        for a in self._active.values():
            fault = a.fault
            if fault.kind in _LINK_KINDS or fault.kind in _STREAM_KINDS or not fault.acts_on(direction):
                continue
            if not fault.matches(frame):
                continue
            if fault.probability < 1.0 and a.rng.random() >= fault.probability:
                continue
            delay = fault.delay
            if fault.jitter:
                delay = max(0.0, delay + a.rng.uniform(-fault.jitter, fault.jitter))
            a.applied += 1
            actions.append(Action(fault.kind, a.id, delay=delay, code=fault.code, count=fault.count, hold=fault.hold))
            self.log.append(Decision(time.monotonic(), a.id, direction, frame.qid, frame.fid, fault.kind))
        return actions

    def replayed(self) -> FaultInjector:
        """A new injector with the same faults, each with a fresh random source from its seed: for replaying a run.

        Example::

            >>> a = FaultInjector(); _ = a.add(drop(probability=0.5, seed=9))
            >>> b = a.replayed()
            >>> [bool(a.decide("upstream", Frame())) for _ in range(8)] == [
            ...     bool(b.decide("upstream", Frame())) for _ in range(8)]
            True
        """
        other = FaultInjector(log_size=self.log.maxlen or 10_000)
        for _, fault in self.faults():
            other.add(replace(fault))
        return other

    def __repr__(self) -> str:
        return f"<FaultInjector {len(self._active)} active: {'; '.join(a.fault.describe() for a in self._active.values())}>"
