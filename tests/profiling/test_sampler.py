"""The sampling profiler: attribution in busy greenlets, greenlet labels, output formats, and a clean stop."""

from __future__ import annotations

import json
import os
import sys
import time
from collections import Counter

import gevent
import greenlet
import pytest

from nexus_green.profiling.sampler import (
    SPEEDSCOPE_SCHEMA,
    SamplerError,
    SamplingProfiler,
    entry_label,
    frame_label,
    greenlet_label,
    parse_collapsed,
)
from nexus_green.testing import run_module_patched


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def spin_in_hot_function(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def cool_function(seconds: float) -> None:
    gevent.sleep(seconds)  # parked: no CPU


def run_busy_and_idle(greenlet_names: bool = True) -> SamplingProfiler:
    prof = SamplingProfiler(interval=0.002, greenlet_names=greenlet_names)
    with prof:
        idle = gevent.spawn(cool_function, 0.3)
        idle.name = "idle-worker"
        busy = gevent.spawn(spin_in_hot_function, 0.4)
        busy.name = "busy-worker"
        gevent.joinall([busy, idle], timeout=10)
    return prof


def test_busy_greenlet_time_goes_to_its_function_and_label() -> None:
    prof = run_busy_and_idle()
    assert prof.samples >= 20, prof
    stacks = prof.stacks()
    hot = sum(n for s, n in stacks.items() if s[-1].endswith("spin_in_hot_function"))
    total = sum(stacks.values())
    # Weighted by time: the spin held the thread for 0.4 s of about 0.4 s, though the
    # sampler gets the GIL from it only every switch interval.
    assert hot / total > 0.8, stacks.most_common(5)
    # Weights add up to the time covered (a gap of a descheduled sampler counts as two intervals).
    assert 0.5 * prof.elapsed <= total / 1e6 <= prof.elapsed * 1.01
    # Every sample in the hot function carries the busy greenlet's label, none the idle one's.
    labels = Counter(s[0] for s in stacks if any("spin_in_hot_function" in f for f in s))
    assert set(labels) == {"busy-worker"}, labels
    assert not any(s[0] == "idle-worker" and "cool_function" in s[-1] for s in stacks)
    top = prof.functions()[0]
    assert top[0].endswith("spin_in_hot_function") and top[1] == top[2]
    assert prof.greenlets()["busy-worker"] >= hot


def test_two_busy_greenlets_are_told_apart() -> None:
    def a_work() -> None:
        spin_in_hot_function(0.15)

    def b_work() -> None:
        spin_in_hot_function(0.15)

    with SamplingProfiler(interval=0.002, greenlet_names=True) as prof:
        ga, gb = gevent.spawn(a_work), gevent.spawn(b_work)
        ga.name, gb.name = "alpha", "beta"
        gevent.joinall([ga, gb], timeout=10)
    by_label = {}
    for stack, n in prof.stacks().items():
        for fn in ("a_work", "b_work"):
            if any(f.endswith(fn) for f in stack):
                by_label.setdefault(fn, Counter())[stack[0]] += n
    assert set(by_label["a_work"]) == {"alpha"}, by_label
    assert set(by_label["b_work"]) == {"beta"}, by_label


def test_default_labels_are_entry_functions_without_a_hook() -> None:
    outer = greenlet.gettrace()
    prof = run_busy_and_idle(greenlet_names=False)
    assert greenlet.gettrace() is outer  # no hook was installed
    stacks = prof.stacks()
    hot = [s for s in stacks if s[-1].endswith("spin_in_hot_function")]
    assert hot and {s[0] for s in hot} == {"test_sampler.spin_in_hot_function"}
    with SamplingProfiler(interval=0.002) as idle:
        gevent.sleep(0.1)  # the hub waits in its loop
    assert idle.greenlets().most_common(1)[0][0] == "Hub", idle.greenlets()
    assert entry_label(None) == "main"


def test_labels() -> None:
    hub = gevent.get_hub()
    assert greenlet_label(hub) == "Hub"
    assert greenlet_label(greenlet.getcurrent()) in ("main", "Greenlet")
    numbered, named = gevent.Greenlet(), gevent.Greenlet()
    numbered.name, named.name = "Greenlet-12", "nexus_green:reader"
    assert greenlet_label(numbered) == "Greenlet"
    assert greenlet_label(named) == "nexus_green:reader"
    raw = greenlet.greenlet(lambda: None)
    assert greenlet_label(raw) == "greenlet"  # no name attribute: the type
    assert frame_label(test_labels.__code__) == "test_sampler.test_labels"


def test_collapsed_output_parses_and_round_trips() -> None:
    prof = run_busy_and_idle()
    text = prof.collapsed()
    parsed = parse_collapsed(text)
    assert sum(parsed.values()) == sum(prof.stacks().values())
    assert parsed == Counter({tuple(p.replace(" ", "_") for p in k): v for k, v in prof.stacks().items()})
    for line in text.splitlines():
        stack, count = line.rsplit(" ", 1)
        assert int(count) > 0 and " " not in stack
    with pytest.raises(ValueError, match="not a collapsed-stack line"):
        parse_collapsed("no-count-here\n")
    assert parse_collapsed("\n") == Counter()


def test_names_with_separators_are_escaped() -> None:
    prof = SamplingProfiler()
    prof._counts[("my greenlet;x", test_labels.__code__)] += 1
    assert parse_collapsed(prof.collapsed()) == Counter({("my_greenlet:x", "test_sampler.test_labels"): 1})


def validate_speedscope(doc: dict) -> None:
    """The required fields of https://www.speedscope.app/file-format-schema.json for sampled profiles."""
    assert doc["$schema"] == SPEEDSCOPE_SCHEMA
    frames = doc["shared"]["frames"]
    assert isinstance(frames, list)
    for frame in frames:
        assert isinstance(frame["name"], str)
        assert set(frame) <= {"name", "file", "line", "col"}
        assert isinstance(frame.get("file", ""), str) and isinstance(frame.get("line", 0), int)
    assert isinstance(doc["profiles"], list) and doc["profiles"]
    for p in doc["profiles"]:
        for key in ("type", "name", "unit", "startValue", "endValue", "samples", "weights"):
            assert key in p, key
        assert p["type"] == "sampled"
        assert p["unit"] in ("none", "nanoseconds", "microseconds", "milliseconds", "seconds", "bytes")
        assert len(p["samples"]) == len(p["weights"])
        for sample in p["samples"]:
            assert all(isinstance(i, int) and 0 <= i < len(frames) for i in sample)
        assert all(w >= 0 for w in p["weights"])
        assert p["startValue"] <= p["endValue"]
        assert p["endValue"] == pytest.approx(sum(p["weights"]))
    assert 0 <= doc.get("activeProfileIndex", 0) < len(doc["profiles"])


def test_speedscope_json_validates(tmp_path) -> None:  # type: ignore[no-untyped-def]
    prof = run_busy_and_idle()
    doc = prof.speedscope("busy")
    validate_speedscope(doc)
    names = [f["name"] for f in doc["shared"]["frames"]]
    assert "greenlet busy-worker" in names
    assert any(n.endswith("spin_in_hot_function") for n in names)
    assert 0.5 * prof.elapsed <= doc["profiles"][0]["endValue"] <= prof.elapsed * 1.01
    collapsed, scope = prof.write(str(tmp_path / "out"))
    with open(collapsed) as f:
        assert parse_collapsed(f.read()) == parse_collapsed(prof.collapsed())
    with open(scope) as f:
        validate_speedscope(json.load(f))


def test_empty_profile_is_still_valid() -> None:
    prof = SamplingProfiler(interval=0.01)
    validate_speedscope(prof.speedscope())
    assert prof.collapsed() == "" and prof.functions() == []


def wait_until(check, timeout: float = 5.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.001)
    return True


def test_thread_stops_and_leaks_nothing() -> None:
    threads_before = set(sys._current_frames())
    fds_before = open_fds()
    prof = SamplingProfiler(interval=0.001)
    for _ in range(3):  # restartable; counts accumulate
        with prof:
            assert prof.running
            # The thread shows in _current_frames once it runs Python (it needs the GIL first).
            assert wait_until(lambda: prof.thread_id in sys._current_frames())
            assert prof.thread_id not in threads_before
            gevent.sleep(0.02)
        assert not prof.running
        # stop() returned after the thread's last Python line; the OS thread is gone right after.
        assert wait_until(lambda: set(sys._current_frames()) == threads_before), sys._current_frames()
    assert open_fds() == fds_before
    assert prof.samples > 0 and prof.ticks >= prof.samples
    assert "stopped" in repr(prof)
    prof.stop()  # idempotent


def test_thread_stops_on_error_and_restores_the_switch_hook() -> None:
    events = []

    def outer_hook(event: str, args: object) -> None:
        events.append(event)

    previous = greenlet.settrace(outer_hook)
    try:
        threads_before = set(sys._current_frames())
        prof = SamplingProfiler(interval=0.001, greenlet_names=True)
        with pytest.raises(ZeroDivisionError), prof:
            gevent.sleep(0.01)  # switches: the outer hook still hears them
            1 / 0  # noqa: B018
        assert not prof.running
        assert wait_until(lambda: set(sys._current_frames()) == threads_before)
        assert "switch" in events
        assert greenlet.gettrace() is outer_hook
    finally:
        greenlet.settrace(previous)


def test_switch_interval_is_lowered_while_sampling_and_restored() -> None:
    before = sys.getswitchinterval()
    with SamplingProfiler(interval=0.005):
        assert sys.getswitchinterval() == pytest.approx(0.0005)
    assert sys.getswitchinterval() == before
    prof = SamplingProfiler(interval=0.005).start()
    sys.setswitchinterval(0.002)  # someone else changed it meanwhile: theirs stays
    try:
        prof.stop()
        assert sys.getswitchinterval() == pytest.approx(0.002)
    finally:
        sys.setswitchinterval(before)


def test_start_twice_and_bad_interval() -> None:
    with pytest.raises(ValueError, match="interval"):
        SamplingProfiler(interval=0)
    prof = SamplingProfiler().start()
    try:
        with pytest.raises(SamplerError, match="already running"):
            prof.start()
        assert "running" in repr(prof)
    finally:
        prof.stop()


def test_failing_start_leaves_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    import nexus_green.profiling.sampler as sampler_module

    def refuse(*args: object) -> None:
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(sampler_module, "_start_new_thread", refuse)
    before = greenlet.gettrace()
    prof = SamplingProfiler(greenlet_names=True)
    with pytest.raises(RuntimeError, match="new thread"):
        prof.start()
    assert not prof.running and greenlet.gettrace() is before
    assert sys.getswitchinterval() == pytest.approx(0.005)


def test_a_failing_sample_is_counted_not_fatal(monkeypatch: pytest.MonkeyPatch) -> None:
    prof = SamplingProfiler(interval=0.001)

    def broken(frame: object, depth: int) -> tuple:
        raise RuntimeError("boom")

    monkeypatch.setattr(prof, "_sample", broken)
    with prof:
        time.sleep(0.03)
    assert prof.errors > 0 and prof.samples == 0


def test_deep_stacks_are_truncated_and_clear_forgets() -> None:
    def recurse(n: int) -> None:
        if n:
            recurse(n - 1)
        else:
            spin_in_hot_function(0.05)

    with SamplingProfiler(interval=0.001, max_depth=10) as prof:
        recurse(50)
    assert prof.samples > 0
    assert max(len(s) for s in prof.stacks()) == 11  # the label and the 10 innermost frames
    prof.clear()
    assert prof.samples == 0 and not prof.stacks() and prof.elapsed == 0


def test_a_dead_target_thread_takes_no_sample() -> None:
    prof = SamplingProfiler(interval=0.001)
    with prof:
        prof._target = -1  # no such thread: ticks, no samples
        time.sleep(0.02)
    assert prof.ticks > 0 and prof.samples == 0


class ScriptedLock:
    """Stands in for the stop lock: ``acquire`` times out ``ticks`` times, then reports the stop."""

    def __init__(self, ticks: int) -> None:
        self.ticks = ticks
        self.released = False

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        if self.ticks:
            self.ticks -= 1
            time.sleep(timeout)
            return False
        return True

    def release(self) -> None:
        self.released = True


def test_the_sampling_loop_run_inline() -> None:
    # The loop body, run in this thread (coverage does not trace a raw thread): it samples the target.
    from nexus_green.profiling.sampler import _get_ident  # the OS thread's id, patched or not

    prof = SamplingProfiler(interval=0.001)
    prof._target = _get_ident()
    prof._hooked = True
    prof._switches["switch"] = (None, greenlet.getcurrent())
    done = ScriptedLock(0)
    prof._run(ScriptedLock(3), done)
    assert done.released and prof.ticks == 3 and prof.samples == 3
    stack = next(iter(prof.stacks()))
    # Sampling its own thread, the loop sees itself innermost, called by this test.
    assert stack[0] == "main" or stack[0] == "Greenlet"
    assert stack[-2:] == ("test_sampler.test_the_sampling_loop_run_inline", "sampler.SamplingProfiler._run")
    assert all(0 < w <= 3 * 2000 for w in prof.stacks().values())
    prof._target = -1  # gone: ticks without samples
    prof._run(ScriptedLock(2), ScriptedLock(0))
    assert prof.ticks == 5 and prof.samples == 3
    prof._target = _get_ident()
    prof.max_depth = "not a number"  # type: ignore[assignment]  # a sample that fails is counted
    prof._run(ScriptedLock(1), ScriptedLock(0))
    assert prof.errors == 1 and prof.samples == 3


def test_the_switch_hook_inline() -> None:
    seen = []
    prof = SamplingProfiler()
    a, b, c = gevent.Greenlet(), gevent.Greenlet(), gevent.Greenlet()
    assert prof._running() is None  # nothing recorded yet
    prof._switches["switch"] = (a, b)
    assert prof._running() is b
    prof._switches["throw"] = (b, c)  # thrown from b, where the last switch went: c runs
    assert prof._running() is c
    prof._switches["switch"] = (c, a)  # then a switch from c
    assert prof._running() is a
    del prof._switches["switch"]
    assert prof._running() is c
    prof._previous_trace = lambda event, args: seen.append(event)
    prof._on_switch("switch", (c, b))
    assert seen == ["switch"] and prof._running() is b


def test_kill_is_a_throw_and_labels_follow_it() -> None:
    def victim() -> None:
        try:
            gevent.sleep(10)
        except gevent.GreenletExit:
            spin_in_hot_function(0.1)  # runs after the throw, before any other switch
            raise

    with SamplingProfiler(interval=0.002, greenlet_names=True) as prof:
        g = gevent.spawn(victim)
        g.name = "victim"
        gevent.sleep(0.01)
        g.kill(timeout=5)
    labels = Counter(s[0] for s, n in prof.stacks().items() if s[-1].endswith("spin_in_hot_function"))
    assert set(labels) == {"victim"}, labels


def test_module_passes_under_patch_all() -> None:
    run = run_module_patched(__file__)
    assert run.returncode == 0, run.report()
