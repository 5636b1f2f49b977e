"""Faults and the FaultInjector: validation, predicates, seeded decisions that replay, run-time control."""

from __future__ import annotations

from typing import Any

import pytest

from nexus_green.chaos import faults as F
from nexus_green.chaos.faults import Fault, FaultInjector, fault_from_dict
from nexus_green.protocol.frames import Frame


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"kind": "drop", "direction": "sideways"}, "direction must be one of"),
        ({"kind": "drop", "probability": 1.5}, "probability must be within 0..1"),
        ({"kind": "latency", "delay": -1}, "delay must not be negative"),
        ({"kind": "throttle"}, "a throttle needs rate > 0"),
        ({"kind": "slice", "chunk": 0}, "chunk must be >= 1"),
        ({"kind": "push_flood", "count": -1}, "count >= 0"),
        ({"kind": "error", "code": 7}, "a status code"),
    ],
)
def test_bad_faults_are_refused_with_a_clear_error(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Fault(**kwargs)


def test_predicates_fid_qid_match_and_heartbeats() -> None:
    f = Fault(kind="drop", fid=[1, 2], qid={5}, match=lambda fr: fr.body == b"x")
    assert f.fid == frozenset({1, 2}) and f.qid == frozenset({5})
    assert f.matches(Frame(fid=1, qid=5, body=b"x"))
    assert not f.matches(Frame(fid=1, qid=6, body=b"x"))
    assert not f.matches(Frame(fid=1, qid=5, body=b"y"))
    heartbeat = Frame(tp=0x01, fid=0xFFFF)
    assert not Fault(kind="drop").matches(heartbeat)
    assert Fault(kind="drop", heartbeats=True).matches(heartbeat)
    assert Fault(kind="blackhole").matches(heartbeat) and Fault(kind="half_open").matches(heartbeat)
    assert not F.error().matches(Frame(res=1)) and F.error().matches(Frame())
    assert F.slow_response(0.1).matches(Frame(res=1)) and not F.slow_response(0.1).matches(Frame())
    assert Fault(kind="drop", qid=3).matches(Frame(qid=3)) and not Fault(kind="drop", qid=3).matches(Frame(qid=4))


def test_directions() -> None:
    up, down, both = F.drop(direction="upstream"), F.drop(direction="downstream"), F.drop()
    assert (up.upstream, up.downstream, down.upstream, down.downstream) == (True, False, False, True)
    assert both.acts_on("upstream") and both.acts_on("downstream") and not up.acts_on("downstream")


def test_every_constructor_builds_its_kind() -> None:
    built = [
        F.latency(0.1),
        F.slow_response(0.1),
        F.drop(),
        F.reorder(),
        F.duplicate(),
        F.close(),
        F.reset(),
        F.half_open(),
        F.throttle(10),
        F.slice_writes(),
        F.blackhole(),
        F.error(),
        F.service_down(),
        F.stop_reading(),
        F.push_flood(),
    ]
    assert sorted(f.kind for f in built) == sorted(F.KINDS)
    assert F.partial_failure(0.25).kind == "error"


def test_to_dict_round_trips_and_from_dict_refuses_bad_data() -> None:
    f = F.error(code=500, fid={3, 4}, probability=0.5, seed=7, name="e")
    data = f.to_dict()
    assert data["fid"] == [3, 4] and "match" not in data
    assert fault_from_dict(data) == f
    assert fault_from_dict({"kind": "drop", "qid": 5}).describe() == "drop both p=1 seed=0 qid=5"
    with pytest.raises(ValueError, match="a fault is a JSON object"):
        fault_from_dict(["drop"])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="needs a 'kind'"):
        fault_from_dict({"probability": 1})
    assert "fid=[3, 4]" in f.describe()


def test_decisions_are_seeded_and_replay_exactly() -> None:
    def decisions(inj: FaultInjector) -> list[list[str]]:
        return [[a.kind for a in inj.decide("downstream", Frame(qid=q, res=1))] for q in range(200)]

    a = FaultInjector()
    a.add(F.drop(probability=0.3, seed=42))
    a.add(F.latency(0.01, jitter=0.005, seed=43))
    a.add(F.throttle(10))  # stream faults never appear in decisions
    a.add(F.service_down())  # nor link faults
    a.add(F.error(probability=1.0))  # upstream only
    b = a.replayed()
    first, second = decisions(a), decisions(b)
    assert first == second
    assert 40 < sum("drop" in d for d in first) < 80  # about 30%
    delays = [x.delay for x in a.decide("downstream", Frame(res=1)) if x.kind == "latency"]
    assert delays and 0.005 <= delays[0] <= 0.015
    assert len(a.log) > 200 and a.log[0].direction == "downstream"
    assert [row["applied"] for row in a.figures()][:2] == [sum("drop" in d for d in first), 201]


def test_run_time_control_add_remove_clear_listeners() -> None:
    inj = FaultInjector(log_size=5)
    seen: list[int] = []
    off = inj.on_change(lambda: seen.append(len(inj.faults())))
    changed = inj.changed
    first = inj.add(F.drop(direction="downstream"))
    assert changed.is_set() and inj.changed is not changed
    second = inj.add(F.half_open())
    assert inj.link_frozen() and not inj.down()
    assert [k for k, _ in inj.faults()] == [first, second]
    assert inj.active("drop", "downstream") and not inj.active("drop", "upstream") and inj.active("drop")
    assert inj.remove(first) and not inj.remove(first)
    off()
    off()  # twice is harmless
    assert inj.clear() == 1 and inj.faults() == []
    assert seen == [1, 2, 1]
    assert [h[1] for h in inj.history] == ["added", "added", "removed", "removed"]
    with pytest.raises(TypeError, match="takes a Fault"):
        inj.add("drop")  # type: ignore[arg-type]
    inj.add(F.drop(seed=1))
    for _ in range(10):
        inj.decide("upstream", Frame())
    assert len(inj.log) == 5
    assert "drop both" in repr(inj)
    assert inj.replayed().faults()[0][1] == F.drop(seed=1)
