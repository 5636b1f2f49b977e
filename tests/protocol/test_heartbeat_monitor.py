"""Heartbeat decisions: when to probe an idle link and when a silent peer is dead."""

from __future__ import annotations

import math

import pytest

from nexus_green.errors import ConfigurationError
from nexus_green.protocol.heartbeat import HeartbeatAction, HeartbeatDecision, HeartbeatMonitor


def test_defaults() -> None:
    hb = HeartbeatMonitor()
    assert hb.interval == 15.0 and hb.timeout == 10.0
    assert hb.poll(14.999) == HeartbeatDecision(action=HeartbeatAction.NONE, next_check_at=15.0)
    assert hb.poll(15.0).action is HeartbeatAction.SEND


def test_idle_link_sends_then_answer_keeps_it_alive() -> None:
    hb = HeartbeatMonitor(interval=10.0, timeout=3.0, now=50.0)
    assert hb.poll(59.0).next_check_at == 60.0
    d = hb.poll(60.0)
    assert d.action == "send" and d.next_check_at == 60.0
    # SEND repeats until the connection reports it sent the frame
    assert hb.poll(60.5).action == "send"
    hb.on_sent(60.5)
    assert hb.awaiting_answer
    assert hb.poll(61.0) == HeartbeatDecision(action=HeartbeatAction.NONE, next_check_at=63.5)
    assert hb.on_ack(61.25) == 0.75
    assert not hb.awaiting_answer
    assert hb.poll(62.0).next_check_at == 71.25
    assert (hb.heartbeats_sent, hb.acks_received, hb.rtts, hb.last_rtt) == (1, 1, (0.75,), 0.75)


def test_no_answer_within_timeout_is_dead_and_dead_is_final() -> None:
    hb = HeartbeatMonitor(interval=1.0, timeout=2.0)
    hb.on_sent(1.0)
    assert hb.poll(2.999).action == "none"
    d = hb.poll(3.0)
    assert d.action == "dead" and d.next_check_at == math.inf
    assert hb.dead
    # a late frame does not resurrect the link; only reset() does
    hb.on_activity(3.1, received=True)
    assert hb.poll(3.2).action == "dead"
    assert "state=dead" in repr(hb)
    hb.reset(10.0)
    assert not hb.dead and hb.poll(10.5).action == "none"


def test_any_received_frame_answers_a_heartbeat_but_gives_no_rtt() -> None:
    hb = HeartbeatMonitor(interval=1.0, timeout=2.0)
    hb.on_sent(1.0)
    hb.on_activity(2.5, received=True)
    assert not hb.awaiting_answer
    assert hb.poll(3.4).action == "none"  # not dead, and idle only since 2.5
    assert hb.poll(3.5).action == "send"
    assert hb.rtts == ()


def test_sent_frames_do_not_postpone_the_heartbeat() -> None:
    """Only inbound frames prove the peer is alive; a writer-only link still probes."""
    hb = HeartbeatMonitor(interval=1.0, timeout=1.0)
    for t in (0.25, 0.5, 0.75, 1.0):
        hb.on_activity(t)
    assert hb.last_sent == 1.0 and hb.last_received == 0.0
    assert hb.poll(1.0).action == "send"
    # ... and a heartbeat we send (which the writer reports as activity) does not answer itself
    hb.on_sent(1.0)
    hb.on_activity(1.0)
    assert hb.poll(2.0).action == "dead"


def test_busy_inbound_link_never_heartbeats() -> None:
    hb = HeartbeatMonitor(interval=5.0, timeout=1.0)
    t = 0.0
    while t < 100:
        t += 4.0
        hb.on_activity(t, received=True)
        assert hb.poll(t).action == "none"
    assert hb.heartbeats_sent == 0


def test_second_heartbeat_does_not_extend_the_deadline_of_the_first() -> None:
    hb = HeartbeatMonitor(interval=1.0, timeout=2.0)
    hb.on_sent(1.0)
    hb.on_sent(2.0)
    assert hb.poll(2.5).next_check_at == 3.0
    assert hb.poll(3.0).action == "dead"


def test_rtt_of_the_latest_heartbeat_and_ack_without_heartbeat() -> None:
    hb = HeartbeatMonitor(interval=1.0, timeout=5.0)
    assert hb.on_ack(0.5) is None
    assert hb.last_rtt is None
    hb.on_sent(1.0)
    hb.on_sent(2.0)
    assert hb.on_ack(2.5) == 0.5
    assert hb.on_ack(2.6) is None  # a duplicate answer
    assert hb.acks_received == 1


def test_rtt_history_is_bounded() -> None:
    hb = HeartbeatMonitor(history=3)
    for i in range(10):
        hb.on_sent(float(i))
        hb.on_ack(i + i / 100)
    assert hb.rtts == (0.07, 0.08, 0.09)


def test_clock_going_backwards_gives_no_negative_rtt_or_time() -> None:
    hb = HeartbeatMonitor(interval=1.0, timeout=1.0)
    hb.on_activity(5.0, received=True)
    hb.on_activity(4.0, received=True)
    hb.on_activity(6.0)
    hb.on_activity(3.0)
    assert (hb.last_received, hb.last_sent) == (5.0, 6.0)
    hb.on_sent(7.0)
    assert hb.on_ack(6.5) == 0.0


def test_disabled_never_sends_and_never_dies() -> None:
    hb = HeartbeatMonitor(interval=None)
    hb.on_sent(0.0)
    for t in (1.0, 1e6):
        assert hb.poll(t) == HeartbeatDecision(action=HeartbeatAction.NONE, next_check_at=math.inf)


def test_repr_states() -> None:
    hb = HeartbeatMonitor(interval=1.0, timeout=1.0)
    assert "state=ok" in repr(hb)
    hb.on_sent(0.0)
    assert "state=awaiting" in repr(hb) and "sent=1" in repr(hb)


@pytest.mark.parametrize(
    "kwargs,text",
    [
        ({"interval": 0}, "interval must be a positive"),
        ({"interval": -1.0}, "interval"),
        ({"interval": math.inf}, "interval"),
        ({"interval": math.nan}, "interval"),
        ({"interval": "15"}, "interval"),
        ({"interval": True}, "interval"),
        ({"timeout": 0.0}, "timeout must be a positive"),
        ({"timeout": None}, "timeout"),
        ({"history": 0}, "history must be a positive integer"),
        ({"history": 2.0}, "history"),
    ],
)
def test_bad_options(kwargs: dict, text: str) -> None:
    with pytest.raises(ConfigurationError, match=text):
        HeartbeatMonitor(**kwargs)


def test_action_compares_to_strings() -> None:
    assert HeartbeatAction.DEAD == "dead" and HeartbeatAction("send") is HeartbeatAction.SEND
