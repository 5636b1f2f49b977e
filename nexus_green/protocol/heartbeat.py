"""Heartbeat decisions for one connection, sans-IO (layer L1).

This module owns *when* a heartbeat frame (Tp 0x01, Fid 0xFFFF) is due and
*when* a silent peer is declared dead. It never reads the time: every method
takes ``now`` (monotonic seconds from the connection's Clock), so tests are
exact. The connection carries the decisions out: it sends the frame, and it
closes the link when told the peer is dead.

Rules:

* The link is idle when nothing has been **received** for ``interval``
  seconds. Only inbound frames prove the peer is alive, so frames we send do
  not postpone the heartbeat (a connection that only writes still probes its
  peer); a busy request/response link never sends one.
* After a heartbeat is sent, the peer must send *something* (the heartbeat
  answer or any other frame) within ``timeout`` seconds, or it is dead.
* ``interval=None`` disables heartbeats: :meth:`HeartbeatMonitor.poll` never
  asks for one and never declares the peer dead.

The monitor keeps the last ``history`` round-trip times (heartbeat sent to its
answer) for monitoring.

Example::

    >>> hb = HeartbeatMonitor(interval=15.0, timeout=5.0)
    >>> hb.reset(now=100.0)                      # connected at t=100
    >>> hb.poll(110.0)
    HeartbeatDecision(action=<HeartbeatAction.NONE: 'none'>, next_check_at=115.0)
    >>> hb.poll(115.0).action == "send"
    True
    >>> hb.on_sent(115.0)
    >>> hb.on_ack(115.25)                        # the answer came back: RTT
    0.25
    >>> hb.poll(131.0).action == "send", hb.on_sent(131.0)
    (True, None)
    >>> hb.poll(136.0)
    HeartbeatDecision(action=<HeartbeatAction.DEAD: 'dead'>, next_check_at=inf)
"""

from __future__ import annotations

import enum
import math
from collections import deque
from dataclasses import dataclass
from typing import Optional

from ..errors import ConfigurationError

__all__ = ["HeartbeatAction", "HeartbeatDecision", "HeartbeatMonitor", "DEFAULT_HEARTBEAT_INTERVAL"]

DEFAULT_HEARTBEAT_INTERVAL = 15.0
DEFAULT_HEARTBEAT_TIMEOUT = 10.0


class HeartbeatAction(str, enum.Enum):
    """What the connection should do now. Compares equal to its string value.

    Example::

        >>> HeartbeatAction.SEND == "send"
        True
    """

    NONE = "none"
    SEND = "send"
    DEAD = "dead"


@dataclass(frozen=True, slots=True, kw_only=True)
class HeartbeatDecision:
    """The answer of :meth:`HeartbeatMonitor.poll`.

    ``next_check_at`` is the monotonic time at which the decision may change
    (poll again then); ``math.inf`` when it never will (disabled or dead).

    Example::

        >>> d = HeartbeatDecision(action=HeartbeatAction.NONE, next_check_at=3.0)
        >>> d.action == "none", d.next_check_at
        (True, 3.0)
    """

    action: HeartbeatAction
    next_check_at: float


def _check_positive(name: str, value: Optional[float], *, allow_none: bool) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0 < value < math.inf):
        raise ConfigurationError(f"heartbeat {name} must be a positive number of seconds, not {value!r}")


class HeartbeatMonitor:
    """Decides when to send a heartbeat and when the peer is dead.

    Feed it what happens on the connection:

    * :meth:`on_activity` for every frame: ``received=True`` for inbound
      frames (proof of life), ``received=False`` (default) for outbound ones;
    * :meth:`on_sent` when a heartbeat was written;
    * :meth:`on_ack` when the peer's heartbeat answer arrived (returns the RTT).

    and ask :meth:`poll` what to do. ``interval`` defaults to 15 s (None
    disables), ``timeout`` to 10 s; ``history`` bounds the kept RTTs.

    Example (a peer that keeps sending frames needs no heartbeat)::

        >>> hb = HeartbeatMonitor(interval=1.0, timeout=0.5)
        >>> hb.reset(0.0)
        >>> for t in (0.5, 1.0, 1.5):
        ...     hb.on_activity(t, received=True)
        >>> hb.poll(2.0).action, hb.heartbeats_sent
        (<HeartbeatAction.NONE: 'none'>, 0)
        >>> HeartbeatMonitor(interval=None).poll(1e9).next_check_at
        inf
    """

    __slots__ = (
        "interval",
        "timeout",
        "_last_received",
        "_last_sent",
        "_ping_sent_at",
        "_awaiting_since",
        "_dead",
        "_rtts",
        "heartbeats_sent",
        "acks_received",
    )

    def __init__(
        self,
        interval: Optional[float] = DEFAULT_HEARTBEAT_INTERVAL,
        timeout: float = DEFAULT_HEARTBEAT_TIMEOUT,
        *,
        now: float = 0.0,
        history: int = 32,
    ) -> None:
        _check_positive("interval", interval, allow_none=True)
        _check_positive("timeout", timeout, allow_none=False)
        if isinstance(history, bool) or not isinstance(history, int) or history < 1:
            raise ConfigurationError(f"heartbeat history must be a positive integer, not {history!r}")
        self.interval: Optional[float] = None if interval is None else float(interval)
        self.timeout: float = float(timeout)
        self._rtts: deque[float] = deque(maxlen=history)
        self.heartbeats_sent = 0
        self.acks_received = 0
        self.reset(now)

    def reset(self, now: float) -> None:
        """Start afresh at ``now`` (a new link): nothing outstanding, not dead; RTT history kept.

        Example::

            >>> hb = HeartbeatMonitor(interval=2.0, timeout=1.0)
            >>> hb.reset(10.0); hb.poll(10.0).next_check_at
            12.0
        """
        self._last_received = now
        self._last_sent = now
        self._ping_sent_at: Optional[float] = None
        self._awaiting_since: Optional[float] = None
        self._dead = False

    # -- inputs --------------------------------------------------------------
    def on_received(self, now: float) -> None:
        """``on_activity(now, received=True)`` for the reader's hot path (a frame or bytes arrived).

        Example::

            >>> hb = HeartbeatMonitor(interval=1.0, timeout=1.0)
            >>> hb.on_received(0.9); hb.poll(1.0).next_check_at
            1.9
        """
        if now > self._last_received:
            self._last_received = now
        self._awaiting_since = None

    def on_activity(self, now: float, *, received: bool = False) -> None:
        """Record a frame sent (``received=False``) or received (``received=True``).

        A received frame proves the peer is alive: it postpones the next
        heartbeat and satisfies one that is awaiting its answer.

        Example::

            >>> hb = HeartbeatMonitor(interval=1.0, timeout=1.0)
            >>> hb.on_activity(0.9, received=True); hb.poll(1.0).next_check_at
            1.9
        """
        if received:
            self._last_received = max(self._last_received, now)
            self._awaiting_since = None
        else:
            self._last_sent = max(self._last_sent, now)

    def on_progress(self, now: float) -> None:
        """Record that bytes moved on the link in either direction: the peer is alive.

        A large upload to a peer that reads slowly keeps the link busy for a
        long time; a heartbeat queued behind it cannot be answered until it is
        written, so the peer's reading (the kernel taking more of our bytes)
        counts as liveness, and misses are counted from the last progress.

        Example::

            >>> hb = HeartbeatMonitor(interval=1.0, timeout=1.0)
            >>> hb.on_sent(1.0); hb.on_progress(1.8); hb.poll(2.5).action.value
            'none'
        """
        self._last_received = max(self._last_received, now)
        self._awaiting_since = None

    def on_sent(self, now: float) -> None:
        """Record that a heartbeat frame was written at ``now``.

        Example::

            >>> hb = HeartbeatMonitor(interval=1.0, timeout=3.0)
            >>> hb.on_sent(1.0); hb.poll(2.0).next_check_at    # its answer is due by 4.0
            4.0
        """
        self.heartbeats_sent += 1
        self._ping_sent_at = now
        if self._awaiting_since is None:
            self._awaiting_since = now
        self._last_sent = max(self._last_sent, now)

    def on_ack(self, now: float) -> Optional[float]:
        """Record the peer's heartbeat answer; returns the round-trip time, or None if none was sent.

        Example::

            >>> hb = HeartbeatMonitor()
            >>> hb.on_ack(1.0) is None
            True
            >>> hb.on_sent(2.0); hb.on_ack(2.004)
            0.004
        """
        self.on_activity(now, received=True)
        sent = self._ping_sent_at
        if sent is None:
            return None
        self._ping_sent_at = None
        self.acks_received += 1
        rtt = round(max(0.0, now - sent), 9)
        self._rtts.append(rtt)
        return rtt

    # -- decision ------------------------------------------------------------
    def poll(self, now: float) -> HeartbeatDecision:
        """What to do at ``now``: ``none``, ``send`` a heartbeat, or the peer is ``dead``.

        ``send`` is repeated on every poll until :meth:`on_sent` is called;
        ``dead`` is final until :meth:`reset`.

        Example::

            >>> hb = HeartbeatMonitor(interval=1.0, timeout=2.0)
            >>> [hb.poll(t).action.value for t in (0.5, 1.0)]
            ['none', 'send']
        """
        if self.interval is None:
            return HeartbeatDecision(action=HeartbeatAction.NONE, next_check_at=math.inf)
        if self._dead:
            return HeartbeatDecision(action=HeartbeatAction.DEAD, next_check_at=math.inf)
        if self._awaiting_since is not None:
            dead_at = self._awaiting_since + self.timeout
            if now >= dead_at:
                self._dead = True
                return HeartbeatDecision(action=HeartbeatAction.DEAD, next_check_at=math.inf)
            return HeartbeatDecision(action=HeartbeatAction.NONE, next_check_at=dead_at)
        due_at = self._last_received + self.interval
        if now >= due_at:
            return HeartbeatDecision(action=HeartbeatAction.SEND, next_check_at=now)
        return HeartbeatDecision(action=HeartbeatAction.NONE, next_check_at=due_at)

    # -- figures -------------------------------------------------------------
    @property
    def awaiting_answer(self) -> bool:
        """True while a heartbeat was sent and nothing has come back yet."""
        return self._awaiting_since is not None

    @property
    def dead(self) -> bool:
        """True once :meth:`poll` declared the peer dead."""
        return self._dead

    @property
    def last_received(self) -> float:
        """Time of the last inbound frame (or of the last :meth:`reset`)."""
        return self._last_received

    @property
    def last_sent(self) -> float:
        """Time of the last outbound frame (or of the last :meth:`reset`)."""
        return self._last_sent

    @property
    def rtts(self) -> tuple[float, ...]:
        """The most recent heartbeat round-trip times, oldest first.

        Example::

            >>> hb = HeartbeatMonitor(history=2)
            >>> for t in (1, 2, 3):
            ...     hb.on_sent(t); _ = hb.on_ack(t + 0.5)
            >>> hb.rtts, hb.last_rtt
            ((0.5, 0.5), 0.5)
        """
        return tuple(self._rtts)

    @property
    def last_rtt(self) -> Optional[float]:
        """The latest round-trip time, or None before the first answer."""
        return self._rtts[-1] if self._rtts else None

    def __repr__(self) -> str:
        state = "dead" if self._dead else "awaiting" if self._awaiting_since is not None else "ok"
        return (
            f"<HeartbeatMonitor interval={self.interval} timeout={self.timeout} state={state} "
            f"sent={self.heartbeats_sent} acks={self.acks_received} last_rtt={self.last_rtt}>"
        )
