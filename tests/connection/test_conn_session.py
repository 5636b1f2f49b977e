"""Session (sans-IO): Qids, pending requests, late replies and dispatch, driven with bytes and plain objects only.

No socket, no greenlet, no clock: frames are encoded to bytes and decoded
back (or built as the decoder's tuples where the decoder would refuse them),
waiters are plain strings and deadlines are plain numbers.
"""

from __future__ import annotations

import heapq
from typing import Any, Optional

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nexus_green.connection.session import (
    ABANDONED_MEMORY,
    DEADLINE_SLACK,
    MAX_QID,
    HeartbeatAck,
    HeartbeatRequest,
    LateReply,
    Push,
    Session,
)
from nexus_green.errors import ConfigurationError
from nexus_green.protocol.frames import (
    TP_GZIP,
    Frame,
    FrameDecoder,
    RawFrame,
    encode_frame,
    encode_request,
    heartbeat_frame,
)


def wait(s: Session, qid: int, waiter: Any = None, *, sent_at: float = 0.0, deadline: Optional[float] = None) -> None:
    """Put a request on the table the way the connection does: one dict store, and a heap push with a deadline."""
    s.pending[qid] = (waiter if waiter is not None else f"w{qid}", 1, sent_at, deadline, b"frame %d" % qid, False)
    if deadline is not None:
        heapq.heappush(s.deadlines, (deadline, qid))


def answer(qid: int, *, code: int = 200, body: bytes = b"", fid: int = 1) -> bytes:
    return encode_frame(Frame(qid=qid, fid=fid, res=1, code=code, body=body))


def push(qid: int = 0, *, fid: int = 9, body: bytes = b"news") -> bytes:
    return encode_frame(Frame(qid=qid, fid=fid, res=0, body=body))


def decode(data: bytes) -> list[RawFrame]:
    return FrameDecoder().feed_raw(data)


# ---------------------------------------------------------------- Qids
def test_qids_start_at_one_and_count_up() -> None:
    s = Session()
    assert [s.take_qid() for _ in range(3)] == [1, 2, 3]
    assert s.last_qid == 3


def test_qids_wrap_around_after_the_largest_u32_and_never_hand_out_zero() -> None:
    s = Session()
    s.last_qid = MAX_QID - 2
    assert [s.take_qid() for _ in range(4)] == [MAX_QID - 1, MAX_QID, 1, 2]


def test_qids_skip_pending_ones_across_the_wrap() -> None:
    s = Session()
    s.last_qid = MAX_QID - 2
    for qid in (MAX_QID - 1, MAX_QID, 1, 3):
        wait(s, qid)
    assert s.take_qid() == 2  # MAX-1, MAX and 1 are still pending
    assert s.take_qid() == 4  # 3 too
    # A Qid is free again once its request left the table.
    s.dispatch(decode(answer(MAX_QID)), now=0.0)
    s.last_qid = MAX_QID - 1
    assert s.take_qid() == MAX_QID


def test_a_taken_qid_is_not_pending_until_the_connection_stores_it() -> None:
    s = Session()
    qid = s.take_qid()
    assert not s.is_pending(qid) and s.in_flight == 0
    wait(s, qid)
    assert s.is_pending(qid) and s.in_flight == 1
    assert s.take_qid() == qid + 1


@given(
    last=st.integers(min_value=0, max_value=MAX_QID),
    offsets=st.sets(st.integers(min_value=1, max_value=40), max_size=30),
)
def test_take_qid_returns_the_first_free_qid_after_the_last_one(last: int, offsets: set[int]) -> None:
    def step(q: int) -> int:
        return q + 1 if q < MAX_QID else 1

    s = Session()
    taken = set()
    for k in offsets:  # pending Qids just after `last`, wrapping past 2**32-1
        q = last
        for _ in range(k):
            q = step(q)
        taken.add(q)
        wait(s, q)
    s.last_qid = last
    expected = step(last)
    while expected in taken:
        expected = step(expected)
    assert s.take_qid() == expected
    assert 1 <= expected <= MAX_QID and not s.is_pending(expected)


# ---------------------------------------------------------------- answers and pushes
def test_answers_reach_their_waiters_in_arrival_order_and_leave_the_table() -> None:
    s = Session()
    for q in (1, 2, 3):
        wait(s, q, sent_at=10.0 + q, deadline=30.0 + q)
    latencies: list[float] = []
    data = answer(3, body=b"c") + answer(1, body=b"a", code=500) + answer(2, body=b"b", code=404)
    answers, non_ok, events = s.dispatch(decode(data), now=20.0, record=latencies.append)
    assert [(w, f[0], f[6]) for w, f in answers] == [("w3", 3, b"c"), ("w1", 1, b"a"), ("w2", 2, b"b")]
    assert non_ok == 2 and events == []
    assert latencies == [7.0, 9.0, 8.0]  # now - sent_at, in arrival order
    assert s.in_flight == 0 and s.pushes == 0 and s.late_responses == 0
    # Their deadline entries went stale: nothing expires, nothing is next.
    assert s.expired(100.0) == [] and s.next_deadline() is None and s.deadlines == []


def test_without_a_recorder_no_latency_is_taken_and_a_request_without_deadline_is_fine() -> None:
    s = Session()
    wait(s, 1, deadline=None)
    answers, non_ok, events = s.dispatch(decode(answer(1)), now=1.0)
    assert [w for w, _ in answers] == ["w1"] and non_ok == 0 and events == []


def test_a_frame_the_server_sent_on_its_own_is_a_push_even_when_its_qid_is_pending() -> None:
    s = Session()
    wait(s, 5)
    answers, _, events = s.dispatch(decode(push(5, body=b"unsolicited")), now=0.0)
    assert answers == []
    assert events == [Push(frame=Frame(qid=5, fid=9, res=0, body=b"unsolicited"))]
    assert s.is_pending(5) and s.pushes == 1  # Res 0 never answers a request


def test_an_answer_nobody_waits_for_is_a_push() -> None:
    s = Session()
    _, _, events = s.dispatch(decode(answer(77, body=b"stray")), now=0.0)
    assert len(events) == 1 and isinstance(events[0], Push)
    assert events[0].frame.qid == 77 and events[0].frame.res == 1 and events[0].frame.body == b"stray"
    assert s.pushes == 1 and s.late_responses == 0


def test_pushes_keep_their_headers_and_compression_bits() -> None:
    s = Session()
    data = encode_frame(Frame(qid=0, fid=4, tp=TP_GZIP, body=b"zipped", headers={"trace-id": "t-1"}))
    _, _, [event] = s.dispatch(decode(data), now=0.0)
    assert isinstance(event, Push)
    assert dict(event.frame.headers) == {"trace-id": "t-1"} and event.frame.tp == TP_GZIP


def test_requests_from_the_peer_are_pushes() -> None:
    # A peer's request frame (what encode_request builds, Res 0) is not an answer to anything.
    s = Session()
    wait(s, 1)
    _, _, events = s.dispatch(decode(encode_request(1, 3, b"hello")), now=0.0)
    assert [type(e) for e in events] == [Push] and s.is_pending(1)


# ---------------------------------------------------------------- late replies
def test_a_reply_to_an_abandoned_qid_is_late_counted_once_then_forgotten() -> None:
    s = Session()
    wait(s, 8, deadline=5.0)
    entry = s.abandon(8)
    assert entry is not None and entry[4] == b"frame 8" and s.expired(10.0) == []
    assert not s.is_pending(8) and s.expects_late(8)
    answers, non_ok, events = s.dispatch(decode(answer(8, code=503)), now=0.0)
    assert answers == [] and non_ok == 0  # a late reply is no answer, whatever its code
    assert events == [LateReply(qid=8, fid=1, code=503)]
    assert s.late_responses == 1 and not s.expects_late(8)
    # A second reply to the same Qid is not late any more: it is a stray answer, a push.
    _, _, again = s.dispatch(decode(answer(8)), now=0.0)
    assert [type(e) for e in again] == [Push] and s.late_responses == 1 and s.pushes == 1


def test_fire_and_forget_qids_are_expected_late() -> None:
    s = Session()
    qid = s.take_qid()
    s.forget(qid)  # what Connection.send does
    _, _, events = s.dispatch(decode(answer(qid)), now=0.0)
    assert events == [LateReply(qid=qid, fid=1, code=200)] and s.late_responses == 1


def test_the_memory_of_abandoned_qids_is_bounded_and_forgets_the_oldest_first() -> None:
    s = Session(abandoned_memory=3)
    for q in range(1, 6):
        s.forget(q)
    assert s.remembered == 3
    assert [q for q in range(1, 6) if s.expects_late(q)] == [3, 4, 5]
    _, _, events = s.dispatch(decode(answer(1) + answer(4)), now=0.0)
    assert [type(e) for e in events] == [Push, LateReply]  # 1 was forgotten: taken for a push
    assert s.late_responses == 1 and s.pushes == 1 and s.remembered == 2


def test_forgetting_a_qid_again_does_not_make_it_younger() -> None:
    s = Session(abandoned_memory=2)
    s.forget(1)
    s.forget(2)
    s.forget(1)  # already remembered: keeps its place as the oldest
    s.forget(3)
    assert not s.expects_late(1) and s.expects_late(2) and s.expects_late(3)


def test_the_default_memory_holds_the_documented_number_of_qids() -> None:
    s = Session()
    for q in range(1, ABANDONED_MEMORY + 101):
        s.forget(q)
    assert s.remembered == ABANDONED_MEMORY
    assert not s.expects_late(100) and s.expects_late(101) and s.expects_late(ABANDONED_MEMORY + 100)


def test_the_memory_must_hold_at_least_one_qid() -> None:
    with pytest.raises(ConfigurationError, match="abandoned_memory"):
        Session(abandoned_memory=0)


# ---------------------------------------------------------------- abandon and fail_all
def test_abandon_takes_only_the_callers_own_request() -> None:
    s = Session()
    wait(s, 4, "caller-a", deadline=3.0)
    assert s.abandon(4, "caller-b") is None  # another caller's request under the same Qid
    assert s.is_pending(4) and s.next_deadline() == 3.0 and not s.expects_late(4)
    entry = s.abandon(4, "caller-a")
    assert entry is not None and entry[0] == "caller-a" and s.next_deadline() is None
    assert s.abandon(4, "caller-a") is None and s.abandon(99) is None


def test_fail_all_empties_the_table_drops_the_deadlines_and_expects_late_replies() -> None:
    s = Session()
    for q, d in zip((1, 2, 3), (4.0, None, 6.0), strict=True):
        wait(s, q, deadline=d)
    old = s.pending
    failed = s.fail_all()
    assert [p[0] for p in failed] == ["w1", "w2", "w3"]
    assert s.in_flight == 0 and s.pending is not old  # replaced: a caller holding the old table still finds its entry
    assert 2 in old
    assert s.deadlines == [] and s.expired(100.0) == []
    assert all(s.expects_late(q) for q in (1, 2, 3))
    _, _, events = s.dispatch(decode(answer(2)), now=0.0)  # the reply came after the link was given up
    assert events == [LateReply(qid=2, fid=1, code=200)]
    assert s.fail_all() == []


# ---------------------------------------------------------------- heartbeats
def test_heartbeat_request_and_ack_are_told_apart_by_res() -> None:
    s = Session()
    answers, _, events = s.dispatch(decode(heartbeat_frame() + heartbeat_frame(response=True)), now=0.0)
    assert answers == [] and events == [HeartbeatRequest(), HeartbeatAck()]
    assert s.pushes == 0 and s.late_responses == 0


def test_a_heartbeat_never_answers_a_request_even_with_a_matching_qid() -> None:
    s = Session()
    wait(s, 0)  # the Qid of every heartbeat frame
    _, _, events = s.dispatch(decode(heartbeat_frame(response=True)), now=0.0)
    assert events == [HeartbeatAck()] and s.is_pending(0)


# ---------------------------------------------------------------- unknown Res values
# The decoder refuses Res > 1 (RemoteProtocolError), so these come as the
# decoder's tuples built by hand: the session must still sort them sanely.
def raw(qid: int, *, res: int, tp: int = 0, code: int = 0, body: bytes = b"") -> RawFrame:
    return (qid, 1, code, tp, res, 1, body, {})


@pytest.mark.parametrize("res", [2, 7, 255])
def test_unknown_res_is_a_push_never_an_answer(res: int) -> None:
    s = Session()
    wait(s, 6)
    s.forget(7)
    answers, _, events = s.dispatch([raw(6, res=res, code=200), raw(7, res=res, code=200)], now=0.0)
    assert answers == [] and [type(e) for e in events] == [Push, Push]
    assert s.is_pending(6) and s.expects_late(7) and s.late_responses == 0
    assert isinstance(events[0], Push) and events[0].frame.res == res


@pytest.mark.parametrize("res", [2, 7, 255])
def test_a_heartbeat_with_unknown_res_counts_as_an_ack(res: int) -> None:
    s = Session()
    _, _, events = s.dispatch([raw(0, res=res, tp=0x01)], now=0.0)
    assert events == [HeartbeatAck()]


def test_the_decoder_itself_refuses_unknown_res() -> None:
    from nexus_green.errors import RemoteProtocolError

    bad = bytearray(answer(1))
    bad[9] = 2  # Res: after Len (4), Tag (2), Ver (2) and Tp (1)
    with pytest.raises(RemoteProtocolError, match="res=2"):
        decode(bytes(bad))


# ---------------------------------------------------------------- a mixed batch
def test_a_mixed_batch_keeps_arrival_order_within_answers_and_within_events() -> None:
    s = Session()
    for q in (1, 2):
        wait(s, q)
    s.forget(3)
    data = (
        push(body=b"p1")
        + answer(2)
        + heartbeat_frame()
        + answer(3)
        + answer(1, code=404)
        + heartbeat_frame(response=True)
        + push(body=b"p2")
    )
    answers, non_ok, events = s.dispatch(decode(data), now=0.0)
    assert [w for w, _ in answers] == ["w2", "w1"] and non_ok == 1
    kinds = [type(e).__name__ for e in events]
    assert kinds == ["Push", "HeartbeatRequest", "LateReply", "HeartbeatAck", "Push"]
    assert [e.frame.body for e in events if isinstance(e, Push)] == [b"p1", b"p2"]
    assert (s.pushes, s.late_responses, s.in_flight) == (2, 1, 0)


def test_bytes_split_anywhere_dispatch_the_same() -> None:
    # The session sees whole frames only: however the bytes were cut, the outcome is the same.
    data = answer(1, body=b"x" * 50) + push() + answer(2) + heartbeat_frame()
    for cut in range(0, len(data) + 1, 7):
        s = Session()
        wait(s, 1)
        wait(s, 2)
        dec = FrameDecoder()
        out: list[Any] = []
        for part in (data[:cut], data[cut:]):
            answers, _, events = s.dispatch(dec.feed_raw(part), now=0.0)
            out += [w for w, _ in answers] + [type(e).__name__ for e in events]
        assert sorted(out) == sorted(["w1", "w2", "Push", "HeartbeatRequest"]), cut


# ---------------------------------------------------------------- deadlines
def test_expired_returns_due_requests_in_deadline_order_and_leaves_them_on_the_table() -> None:
    s = Session()
    for q, d in ((1, 5.0), (2, 2.0), (3, 9.0), (4, 2.0), (5, None)):
        wait(s, q, deadline=d)
    assert s.expired(1.9) == [] and s.next_deadline() == 2.0
    assert s.expired(5.0) == [2, 4, 1]  # at or before now; ties by Qid
    assert s.in_flight == 5  # the connection abandons them, not the session
    assert s.next_deadline() == 9.0 and s.expired(5.0) == []  # each is due once


def test_a_reused_qid_with_another_deadline_is_not_expired_by_the_old_entry() -> None:
    s = Session()
    wait(s, 7, deadline=1.0)
    s.pending.pop(7)  # answered
    wait(s, 7, deadline=8.0)  # the Qid came round again
    assert s.expired(2.0) == [] and s.next_deadline() == 8.0 and s.expired(8.0) == [7]


def test_the_heap_stays_bounded_by_the_requests_in_flight() -> None:
    """Answered requests leave their entry behind; compaction keeps 2 x pending + slack at most."""
    s = Session()
    for q in range(1, 50_001):
        wait(s, q, deadline=float(q))
        if q > 10:
            del s.pending[q - 10]  # answered: ten stay in flight
        if len(s.deadlines) > s.deadline_room:  # what the connection does after each push
            s.compact_deadlines()
        assert len(s.deadlines) <= 2 * 10 + DEADLINE_SLACK + 1
    assert s.expired(49_995.0) == [49_991, 49_992, 49_993, 49_994, 49_995]


def test_repr_tells_the_table() -> None:
    s = Session()
    wait(s, s.take_qid())
    s.forget(9)
    assert repr(s) == "<Session in_flight=1 last_qid=1 remembered=1 late_responses=0 pushes=0>"


def test_the_session_module_imports_no_io() -> None:
    # import-linter enforces it (setup.cfg); this says it where the tests are.
    import ast
    from pathlib import Path

    import nexus_green.connection.session as module

    tree = ast.parse(Path(module.__file__).read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {
        n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module and not n.level
    }
    assert not imported & {"socket", "ssl", "select", "selectors", "gevent", "greenlet", "time"}
