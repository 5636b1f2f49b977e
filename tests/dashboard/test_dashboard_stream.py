"""RealtimeStream and Subscriber: ticks, the replay ring, bounded queues, the producer greenlet."""

from __future__ import annotations

import json
import logging
from typing import Any

import gevent
import pytest

from nexus_green.dashboard import MetricsAggregator, RealtimeStream, StreamClosed
from nexus_green.errors import ConfigurationError, UsageError
from nexus_green.monitoring import PerformanceMonitor


@pytest.fixture
def agg(monitor: PerformanceMonitor) -> Any:
    a = MetricsAggregator(monitor)
    yield a
    a.close()


def test_options_are_checked(agg: MetricsAggregator) -> None:
    with pytest.raises(ConfigurationError, match="replay must be at least 1"):
        RealtimeStream(agg, replay=0)
    with pytest.raises(ConfigurationError, match="queue_size must be at least 1"):
        RealtimeStream(agg, queue_size=0)
    with pytest.raises(ConfigurationError, match="a number of seconds from 1 to 60"):
        RealtimeStream(agg, interval="often")  # type: ignore[arg-type]
    stream = RealtimeStream(agg, interval=60)
    assert stream.since(1) is None  # nothing published yet
    stream.close()
    with pytest.raises(UsageError, match="closed"):
        stream.start()
    with pytest.raises(UsageError, match="closed"):
        stream.subscribe()


def test_events_carry_the_view_and_increasing_ids(agg: MetricsAggregator) -> None:
    stream = RealtimeStream(agg, interval=7, replay=3)
    watcher = stream.subscribe()  # publishes the first tick, then sends it as a snapshot
    snap = watcher.next(timeout=0)
    assert snap is not None and snap.name == "snapshot" and snap.id == 1
    assert json.loads(snap.data)["series"] and json.loads(snap.data)["interval"] == 7
    ids = [stream.publish().id for _ in range(4)]
    assert ids == [2, 3, 4, 5] and [e.id for e in stream.ring] == [3, 4, 5]
    got = [watcher.next(timeout=0) for _ in range(4)]
    assert [e.id for e in got if e is not None] == ids and watcher.delivered == 5
    assert watcher.next(timeout=0.01) is None  # nothing more: waits, then None
    assert stream.since(2) == list(stream.ring) and stream.since(5) == [] and stream.since(1) is None
    assert "open" in repr(watcher) and "watchers=1" in repr(stream)
    watcher.close()
    assert stream.watchers == 0 and "closed" in repr(watcher)
    with pytest.raises(StreamClosed, match="closed"):
        watcher.next(timeout=0)
    assert watcher.offer(stream.publish()) is False
    stream.close()


def test_a_full_queue_drops_the_watcher_and_aborts_its_connection(agg: MetricsAggregator) -> None:
    stream = RealtimeStream(agg, interval=60, queue_size=2)
    aborted: list[str] = []
    quiet, gone, silent = stream.subscribe(), stream.subscribe(), stream.subscribe()
    quiet.abort = lambda: aborted.append("quiet")

    def already_closed() -> None:
        raise OSError("socket already closed")

    gone.abort = already_closed
    for _ in range(3):  # each has its snapshot (not counted) and then 2 ticks queued
        stream.publish()
    for w in (quiet, gone, silent):
        assert w.dropped and w.reason == "too slow: 3 events waiting (queue of 2)" and not w.queue
        with pytest.raises(StreamClosed, match="too slow"):
            w.next(timeout=0)
    assert aborted == ["quiet"] and stream.dropped == 3 and stream.watchers == 0
    assert "dropped" in repr(quiet)
    quiet.drop("again")  # idempotent
    assert stream.dropped == 3


def test_a_replayed_backlog_does_not_count_against_the_queue(agg: MetricsAggregator) -> None:
    stream = RealtimeStream(agg, interval=60, queue_size=1, replay=10)
    first = stream.publish().id
    for _ in range(5):
        stream.publish()
    back = stream.subscribe(last_event_id=first)
    assert len(back.queue) == 5 and not back.dropped
    stream.publish()  # 5 replayed + 1 new: still within the queue of 1 for new events
    assert not back.dropped
    assert [e.id for e in back.pending()] == list(range(first + 1, first + 7))
    stream.publish()
    stream.publish()
    assert back.dropped


def test_the_producer_ticks_and_pushes_breaker_changes_at_once(
    leakcheck: None, monitor: PerformanceMonitor, agg: MetricsAggregator
) -> None:
    stream = RealtimeStream(agg, interval=60).start()
    assert stream.start() is stream and stream.running
    watcher = stream.subscribe()
    assert watcher.next(timeout=5) is not None  # the first tick, as a snapshot
    monitor.bus.emit("breaker.state", breaker="db", old="closed", new="open", reason="failure_rate")
    event = watcher.next(timeout=5)  # long before the 60 s interval
    assert event is not None and json.loads(event.data)["resilience"]["breakers_open"] == 1
    stream.poke()
    assert watcher.next(timeout=5) is not None
    stream.interval = 1  # a shorter interval applies at once
    assert watcher.next(timeout=5) is not None
    stream.close()
    assert not stream.running
    with pytest.raises(StreamClosed, match="stopped"):
        watcher.next(timeout=0)


def test_a_failing_build_does_not_end_the_producer(
    monitor: PerformanceMonitor, agg: MetricsAggregator, caplog: pytest.LogCaptureFixture, monkeypatch: Any
) -> None:
    stream = RealtimeStream(agg, interval=1)
    watcher = stream.subscribe()
    watcher.pending()
    calls = {"n": 0}
    build = agg.build

    def flaky() -> dict[str, Any]:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("boom")
        return build()

    monkeypatch.setattr(agg, "build", flaky)
    with caplog.at_level(logging.ERROR, logger="nexus_green.dashboard"):
        stream.start()
        assert watcher.next(timeout=5) is not None  # the second build, a second later
    assert "building the view model failed" in caplog.text and calls["n"] >= 2
    stream.close()


def test_snapshot_event_publishes_when_nothing_was(agg: MetricsAggregator) -> None:
    stream = RealtimeStream(agg, interval=60)
    snap = stream.snapshot_event()
    assert snap.name == "snapshot" and snap.id == 1 and stream.published == 1
    gevent.sleep(0)
    stream.close()
