"""The per-link session of a Connection, sans-IO: Qids, pending requests, late replies, what each frame is.

This module owns the bookkeeping of one multiplexed link, apart from any I/O:

* the Qid table: :meth:`Session.take_qid` hands out Qids 1 .. 2**32-1,
  wrapping around and skipping the ones still pending;
* the pending requests: :attr:`Session.pending` maps a Qid to its
  :data:`Pending` entry. The waiter in an entry is opaque here (the
  connection wakes it);
* the deadlines: :attr:`Session.deadlines` is a heap of ``(deadline, qid)``
  that the connection pushes onto for each request with a time limit.
  Nothing is cancelled when a request leaves the table: :meth:`Session.expired`
  and :meth:`Session.next_deadline` pass over entries whose request is gone,
  and :meth:`Session.compact_deadlines` rebuilds the heap from the table once
  it holds more than twice the pending requests (plus 1,024), so it stays
  bounded by the work in flight. The connection keeps one timer, for the
  earliest deadline, instead of one per request;
* the memory of abandoned Qids (timed out, failed, or sent fire-and-forget),
  bounded to ``abandoned_memory`` Qids, so that a reply that comes after its
  caller gave up is recognised (and counted) as late instead of taken for a push;
* :meth:`Session.dispatch`: decoded frames in; answers for pending requests
  (each with its waiter) and events out, in arrival order: :class:`Push`,
  :class:`LateReply`, :class:`HeartbeatRequest` (answer it) and
  :class:`HeartbeatAck`.

It imports no socket, ssl, gevent or time (an import-linter contract in
setup.cfg enforces it): the connection's request path and I/O greenlets call
into it, and tests drive it with bytes and plain objects.

Example::

    >>> from nexus_green.protocol.frames import Frame, FrameDecoder, encode_frame
    >>> s = Session()
    >>> qid = s.take_qid()
    >>> s.pending[qid] = ("caller", 7, 10.0, None, b"", False)
    >>> wire = encode_frame(Frame(qid=qid, fid=7, res=1, code=200, body=b"hi"))
    >>> wire += encode_frame(Frame(qid=0, fid=9, body=b"news"))
    >>> answers, non_ok, events = s.dispatch(FrameDecoder().feed_raw(wire), now=10.5)
    >>> [(waiter, frame[6]) for waiter, frame in answers], non_ok, s.in_flight
    ([('caller', b'hi')], 0, 0)
    >>> [type(e).__name__ for e in events], events[0].frame.body
    (['Push'], b'news')
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from heapq import heapify, heappop
from typing import Any, Optional, Union

from ..errors import ConfigurationError
from ..protocol.frames import TP_HEARTBEAT, Frame, RawFrame, make_frame

__all__ = [
    "ABANDONED_MEMORY",
    "DEADLINE_SLACK",
    "MAX_QID",
    "HeartbeatAck",
    "HeartbeatRequest",
    "LateReply",
    "Pending",
    "Push",
    "Session",
    "SessionEvent",
]

MAX_QID = 0xFFFFFFFF
ABANDONED_MEMORY = 4096  # how many abandoned Qids a session remembers to recognise late replies


# A pending request, as the connection stores it: (waiter, fid, sent_at,
# deadline or None, frame bytes, by_deadline). A tuple is cheaper than an object
# on the per-request path. The session reads sent_at (for latencies) and the
# deadline (to tell a live heap entry from a stale one); it hands the waiter
# back and never calls it. The frame bytes let the connection take an expired
# request's frame back out of its write queue when it was never written (then
# it is certainly not sent).
# (waiter, fid, sent_at, deadline, queued frame, by_deadline)
Pending = tuple[Any, int, float, Optional[float], Any, bool]

DEADLINE_SLACK = 1024  # the deadline heap is rebuilt once it holds 2 x pending + this many entries


@dataclass(frozen=True, slots=True, kw_only=True)
class Push:
    """A frame the server sent on its own (Res 0, or any Res but 1), or an answer whose Qid nobody waits for.

    Example::

        >>> Push(frame=Frame(qid=0, fid=9, body=b"news")).frame.fid
        9
    """

    frame: Frame


@dataclass(frozen=True, slots=True, kw_only=True)
class LateReply:
    """An answer to a Qid whose caller gave up (timed out, failed, or sent fire-and-forget); it is discarded.

    Example::

        >>> LateReply(qid=5, fid=1, code=200)
        LateReply(qid=5, fid=1, code=200)
    """

    qid: int
    fid: int
    code: int


@dataclass(frozen=True, slots=True, kw_only=True)
class HeartbeatRequest:
    """The peer's heartbeat (Tp 0x01, Res 0): the connection answers it.

    Example::

        >>> HeartbeatRequest() == HeartbeatRequest()
        True
    """


@dataclass(frozen=True, slots=True, kw_only=True)
class HeartbeatAck:
    """An answer to a heartbeat (Tp 0x01, Res other than 0): the peer is alive.

    Example::

        >>> HeartbeatAck() == HeartbeatAck()
        True
    """


SessionEvent = Union[Push, LateReply, HeartbeatRequest, HeartbeatAck]

_HEARTBEAT_REQUEST = HeartbeatRequest()
_HEARTBEAT_ACK = HeartbeatAck()
# A push flood builds one Push per frame: through the slot descriptor, as
# make_frame does, it costs a third of the frozen dataclass __init__.
_new = object.__new__
_set_push_frame = Push.__dict__["frame"].__set__


class Session:
    """The Qid table, pending requests and late-reply memory of one link, and the dispatch of its frames.

    ``abandoned_memory`` bounds how many abandoned Qids are remembered (the
    oldest is forgotten first); a reply to a forgotten one is taken for a push.

    Example::

        >>> s = Session()
        >>> s.last_qid = MAX_QID - 1
        >>> s.take_qid(), s.take_qid()   # wraps around after 2**32-1
        (4294967295, 1)
    """

    __slots__ = (
        "pending",
        "deadlines",
        "deadline_room",
        "last_qid",
        "late_responses",
        "pushes",
        "_abandoned",
        "_memory",
    )

    def __init__(self, *, abandoned_memory: int = ABANDONED_MEMORY) -> None:
        if abandoned_memory < 1:
            raise ConfigurationError(f"abandoned_memory must be at least 1, got {abandoned_memory}")
        # The connection adds entries directly (one dict store on the
        # per-request path); the session's methods take them out.
        self.pending: dict[int, Pending] = {}
        # (deadline, qid), a heap the connection pushes onto (heapq.heappush) for every
        # request with a deadline; entries of requests that left the table stay until
        # they reach the top or the heap is compacted (above deadline_room entries).
        self.deadlines: list[tuple[float, int]] = []
        self.deadline_room = DEADLINE_SLACK
        self.last_qid = 0  # the last Qid handed out; settable (tests start near the wrap)
        self.late_responses = 0  # replies recognised as late, since the session began
        self.pushes = 0  # frames dispatched as Push
        self._abandoned: dict[int, None] = {}  # insertion-ordered: the oldest is forgotten first
        self._memory = abandoned_memory

    @property
    def in_flight(self) -> int:
        """Requests on the table: sent (or queued) and not yet answered, abandoned or failed.

        Example::

            >>> s = Session(); s.pending[s.take_qid()] = (None, 1, 0.0, None, b"", False); s.in_flight
            1
        """
        return len(self.pending)

    @property
    def remembered(self) -> int:
        """How many abandoned Qids are remembered now (at most ``abandoned_memory``).

        Example::

            >>> s = Session(abandoned_memory=2)
            >>> for qid in (1, 2, 3): s.forget(qid)
            >>> s.remembered, s.expects_late(1), s.expects_late(3)
            (2, False, True)
        """
        return len(self._abandoned)

    def is_pending(self, qid: int) -> bool:
        """True while ``qid`` is on the table.

        Example::

            >>> s = Session(); s.pending[5] = (None, 1, 0.0, None, b"", False); s.is_pending(5), s.is_pending(6)
            (True, False)
        """
        return qid in self.pending

    def expects_late(self, qid: int) -> bool:
        """True when a reply to ``qid`` would be a :class:`LateReply` (its caller gave up and it is still remembered).

        Example::

            >>> s = Session(); s.forget(9); s.expects_late(9), s.expects_late(10)
            (True, False)
        """
        return qid in self._abandoned

    def take_qid(self) -> int:
        """The next Qid: one more than the last, wrapping from 2**32-1 to 1, skipping Qids still pending.

        Example::

            >>> s = Session()
            >>> s.pending[2] = (None, 1, 0.0, None, b"", False)   # Qid 2 still waits for its answer
            >>> s.take_qid(), s.take_qid()
            (1, 3)
        """
        last = self.last_qid
        qid = last + 1 if last < MAX_QID else 1
        if qid in self.pending:
            pending = self.pending
            while qid in pending:
                qid = qid + 1 if qid < MAX_QID else 1
        self.last_qid = qid
        return qid

    def forget(self, qid: int) -> None:
        """Expect no answer to ``qid`` any more: a reply to it becomes a :class:`LateReply`.

        The connection calls it for fire-and-forget sends; :meth:`abandon`
        and :meth:`fail_all` call it for the requests they take off the table.
        At most ``abandoned_memory`` Qids are remembered, the oldest forgotten first.

        Example::

            >>> s = Session(); s.forget(4)
            >>> _, _, events = s.dispatch([(4, 1, 200, 0, 1, 1, b"", {})], now=0.0)
            >>> events, s.late_responses
            ([LateReply(qid=4, fid=1, code=200)], 1)
        """
        ab = self._abandoned
        ab[qid] = None
        if len(ab) > self._memory:
            del ab[next(iter(ab))]

    def abandon(self, qid: int, waiter: Any = None) -> Optional[Pending]:
        """Take request ``qid`` off the table because its caller gave up; return its entry, or None.

        The Qid is remembered (its answer will be late); its deadline entry, if
        any, is now stale and passed over. With ``waiter``, only an entry
        holding that very waiter is taken: a caller never abandons another
        caller's request.

        Example::

            >>> s = Session(); s.pending[3] = ("w", 1, 0.0, 9.0, b"frame", False)
            >>> s.abandon(3, "someone else") is None
            True
            >>> s.abandon(3, "w")[4]
            b'frame'
            >>> s.abandon(3) is None, s.expects_late(3)
            (True, True)
        """
        pending = self.pending
        p = pending.get(qid)
        if p is None or (waiter is not None and p[0] is not waiter):
            return None
        del pending[qid]
        self.forget(qid)
        return p

    def fail_all(self) -> list[Pending]:
        """Take every request off the table (the link died or was closed) and return their entries.

        The table is replaced, not emptied: a caller still holding the old
        one finds its entry there. Every Qid is remembered (a reply on a
        later link would be late) and the deadlines are dropped; the
        connection then fails each waiter.

        Example::

            >>> s = Session(); s.pending[1] = ("a", 1, 0.0, None, b"", False); s.pending[2] = ("b", 1, 0.0, None, b"", False)
            >>> [p[0] for p in s.fail_all()], s.in_flight, s.expects_late(2)
            (['a', 'b'], 0, True)
        """
        pending, self.pending = self.pending, {}
        self.deadlines = []
        self.deadline_room = DEADLINE_SLACK
        forget = self.forget
        for qid in pending:
            forget(qid)
        return list(pending.values())

    def expired(self, now: float) -> list[int]:
        """Take the deadlines at or before ``now`` off the heap; return the Qids of those requests still pending.

        The requests stay on the table: the connection abandons each (and
        fails its caller). Entries of requests that already left the table
        are dropped on the way.

        Example::

            >>> import heapq
            >>> s = Session()
            >>> for qid, deadline in ((1, 5.0), (2, 3.0), (3, 9.0)):
            ...     s.pending[qid] = ("w", 1, 0.0, deadline, b"", False)
            ...     heapq.heappush(s.deadlines, (deadline, qid))
            >>> del s.pending[2]   # answered
            >>> s.expired(6.0), s.next_deadline(), s.in_flight   # Qid 1 stays on the table
            ([1], 9.0, 2)
        """
        heap, pending = self.deadlines, self.pending
        due: list[int] = []
        while heap:
            deadline, qid = heap[0]
            p = pending.get(qid)
            if p is not None and p[3] == deadline:
                if deadline > now:
                    break
                due.append(qid)
            heappop(heap)
        return due

    def next_deadline(self) -> Optional[float]:
        """The earliest deadline of a request still pending, or None (stale entries on top are dropped).

        Example::

            >>> import heapq
            >>> s = Session(); s.pending[7] = ("w", 1, 0.0, 4.0, b"", False)
            >>> heapq.heappush(s.deadlines, (2.0, 6)); heapq.heappush(s.deadlines, (4.0, 7))
            >>> s.next_deadline(), s.deadlines   # Qid 6 is not pending: its entry is gone
            (4.0, [(4.0, 7)])
        """
        heap, pending = self.deadlines, self.pending
        while heap:
            deadline, qid = heap[0]
            p = pending.get(qid)
            if p is not None and p[3] == deadline:
                return deadline
            heappop(heap)
        return None

    def compact_deadlines(self) -> None:
        """Rebuild the deadline heap from the pending requests (the connection calls it above ``deadline_room``).

        Answered requests leave their heap entry behind; this bounds the heap
        by the requests in flight: after it, room for as many again plus
        ``DEADLINE_SLACK`` before the next rebuild.

        Example::

            >>> import heapq
            >>> s = Session(); s.pending[2] = ("w", 1, 0.0, 8.0, b"", False)
            >>> for qid in range(1, 2000): heapq.heappush(s.deadlines, (float(qid), qid))
            >>> s.compact_deadlines(); s.deadlines, s.deadline_room
            ([(8.0, 2)], 1026)
        """
        heap = [(p[3], qid) for qid, p in self.pending.items() if p[3] is not None]
        heapify(heap)
        self.deadlines = heap
        self.deadline_room = 2 * len(self.pending) + DEADLINE_SLACK

    def dispatch(
        self, frames: Iterable[RawFrame], now: float, record: Optional[Callable[[float], None]] = None
    ) -> tuple[list[tuple[Any, RawFrame]], int, list[SessionEvent]]:
        """Sort decoded frames: return ``(answers, non_ok, events)``.

        ``answers`` pairs the waiter of each answered request with its frame,
        in arrival order; those requests leave the table (their deadline
        entries go stale). ``non_ok`` counts the answers whose code is not 200.
        ``events`` holds the other frames, in arrival order: a
        :class:`LateReply` for an answer to an abandoned Qid (counted in
        ``late_responses``; the Qid is then forgotten), a :class:`Push` for a
        frame with Res other than 1 or an answer nobody waits for (counted in
        ``pushes``), a :class:`HeartbeatRequest` or :class:`HeartbeatAck` for
        a heartbeat with Res 0 or any other Res. ``record``, when given,
        receives each answer's latency (``now`` minus its ``sent_at``).

        Frames are the decoder's tuples ``(qid, fid, code, tp, res, ver, body,
        headers)`` (:meth:`~nexus_green.protocol.frames.FrameDecoder.feed_raw`).

        Example::

            >>> s = Session(); latencies = []
            >>> s.pending[1] = ("w1", 1, 1.0, None, b"", False)
            >>> frames = [(1, 1, 404, 0, 1, 1, b"", {}), (0, 0xFFFF, 0, 0x01, 0, 1, b"", {})]
            >>> answers, non_ok, events = s.dispatch(frames, now=1.5, record=latencies.append)
            >>> [w for w, _ in answers], non_ok, events, latencies
            (['w1'], 1, [HeartbeatRequest()], [0.5])
        """
        answers: list[tuple[Any, RawFrame]] = []
        events: list[SessionEvent] = []
        non_ok = 0
        pending = self.pending
        for f in frames:
            # f = (qid, fid, code, tp, res, ver, body, headers)
            if f[4] == 1 and not f[3] & TP_HEARTBEAT:
                p = pending.pop(f[0], None)
                if p is not None:
                    answers.append((p[0], f))
                    if record is not None:
                        record(now - p[2])
                    if f[2] != 200:  # CODE_OK, as a literal: this runs once per answer
                        non_ok += 1
                    continue
                abandoned = self._abandoned
                if f[0] in abandoned:
                    del abandoned[f[0]]
                    self.late_responses += 1
                    events.append(LateReply(qid=f[0], fid=f[1], code=f[2]))
                    continue
            elif f[3] & TP_HEARTBEAT:
                events.append(_HEARTBEAT_REQUEST if f[4] == 0 else _HEARTBEAT_ACK)
                continue
            self.pushes += 1
            push = _new(Push)
            _set_push_frame(push, make_frame(*f))
            events.append(push)
        return answers, non_ok, events

    def __repr__(self) -> str:
        """Example::

        >>> Session()
        <Session in_flight=0 last_qid=0 remembered=0 late_responses=0 pushes=0>
        """
        return (
            f"<Session in_flight={len(self.pending)} last_qid={self.last_qid} remembered={len(self._abandoned)} "
            f"late_responses={self.late_responses} pushes={self.pushes}>"
        )
