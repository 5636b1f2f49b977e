"""Circuit breaker: every transition and number of issue 6, exactly, on a FakeClock."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import textwrap
from typing import Any, Optional

import gevent
import pybreaker
import pytest
from gevent.event import Event as GEvent

from nexus_green.clock import FakeClock
from nexus_green.errors import CircuitOpen, ConfigurationError, ConnectionRefused, RequestTimeout
from nexus_green.events import Event, EventBus
from nexus_green.resilience.breaker import (
    STATE_CLOSED,
    STATE_HALF_OPEN,
    STATE_OPEN,
    TRANSITIONS,
    BreakerConfig,
    CircuitBreaker,
    CircuitBreakerError,
    CircuitBreakerListener,
    CircuitBreakerOpen,
    CircuitMemoryStorage,
    circuit_breaker,
)


class Recorder:
    def __init__(self) -> None:
        self.bus = EventBus()
        self.events: list[Event] = []
        self.bus.subscribe(self.events.append, prefix="breaker.")

    def named(self, name: str) -> list[Event]:
        return [e for e in self.events if e.name == name]


def make(clock: Optional[FakeClock] = None, rec: Optional[Recorder] = None, **options: Any) -> CircuitBreaker:
    options.setdefault("reset_jitter", 0.0)
    return CircuitBreaker(
        name="t", clock=clock or FakeClock(), rng=random.Random(0), bus=(rec or Recorder()).bus, **options
    )


def fail(cb: CircuitBreaker, exc: Optional[BaseException] = None) -> str:
    return cb.record(cb.admit(), exc or ConnectionRefused("no"))


def ok(cb: CircuitBreaker) -> str:
    return cb.record(cb.admit(), None)


# --- closed -> open ---------------------------------------------------------------------
def test_more_than_five_consecutive_failures_opens_on_the_sixth() -> None:
    rec = Recorder()
    cb = make(rec=rec, minimum_calls=1000)
    for _ in range(5):
        fail(cb)
    assert cb.current_state == STATE_CLOSED and cb.fail_counter == 5
    fail(cb)
    assert cb.current_state == STATE_OPEN
    (ev,) = rec.named("breaker.state")
    assert ev.attrs["old"] == STATE_CLOSED and ev.attrs["new"] == STATE_OPEN
    assert ev.attrs["reason"] == "consecutive_failures" and ev.attrs["open_for"] == 1.0
    assert ev.attrs["breaker"] == "t" and ev.attrs["openings"] == 1
    assert cb.fail_max == 6  # pybreaker's "failures at which it opens"


def test_a_success_resets_the_consecutive_count() -> None:
    cb = make(minimum_calls=1000)
    for _ in range(5):
        fail(cb)
    ok(cb)
    assert cb.fail_counter == 0
    for _ in range(5):
        fail(cb)
    assert cb.current_state == STATE_CLOSED


def test_failure_rate_above_half_opens_only_once_minimum_calls_reached() -> None:
    rec = Recorder()
    cb = make(rec=rec, minimum_calls=10, max_consecutive_failures=None)
    for _ in range(4):
        ok(cb)
    for _ in range(5):
        fail(cb)
    assert cb.figures().calls == 9 and cb.current_state == STATE_CLOSED  # 5/9 > 50% but below minimum
    fail(cb)  # 6/10 = 60%
    assert cb.current_state == STATE_OPEN
    assert rec.named("breaker.state")[0].attrs["reason"] == "failure_rate"


def test_failure_rate_of_exactly_half_stays_closed() -> None:
    cb = make(minimum_calls=10, max_consecutive_failures=None)
    for i in range(10):
        fail(cb) if i % 2 else ok(cb)
    assert cb.figures().failure_rate == 0.5
    assert cb.current_state == STATE_CLOSED


def test_window_is_ten_seconds_of_one_second_buckets() -> None:
    clock = FakeClock()
    cb = make(clock, minimum_calls=10, max_consecutive_failures=None)
    for _ in range(5):
        fail(cb)
    clock.advance(9.99)
    assert cb.figures().calls == 5
    clock.advance(0.01)  # t=10.0: the bucket of [0, 1) has left the window
    assert cb.figures().calls == 0
    for _ in range(5):
        ok(cb)
    for _ in range(5):
        fail(cb)
    assert cb.current_state == STATE_CLOSED  # the old failures no longer count: 5/10


def test_slow_call_rate_above_thirty_percent_opens() -> None:
    rec = Recorder()
    cb = make(rec=rec, minimum_calls=10, max_consecutive_failures=None, failure_rate_threshold=None)
    for _ in range(7):
        ok(cb)
    for _ in range(3):
        fail(cb, RequestTimeout("slow"))
    assert cb.figures().slow_rate == pytest.approx(0.3) and cb.current_state == STATE_CLOSED
    fail(cb, RequestTimeout("slow"))  # 4/11 > 30%
    assert cb.current_state == STATE_OPEN
    assert rec.named("breaker.state")[0].attrs["reason"] == "slow_call_rate"


def test_successful_calls_slower_than_slow_call_duration_count_as_slow() -> None:
    clock = FakeClock()
    cb = make(clock, minimum_calls=10, slow_call_duration=1.0)
    for i in range(10):
        t = cb.admit()
        clock.advance(2.0 if i < 4 else 0.1)
        cb.record(t, None)
        if i == 3:
            assert cb.figures().slow == 4
    assert cb.current_state == STATE_OPEN


def test_each_condition_can_be_disabled() -> None:
    cb = make(
        minimum_calls=1,
        max_consecutive_failures=None,
        failure_rate_threshold=None,
        slow_call_rate_threshold=None,
    )
    for _ in range(50):
        fail(cb, RequestTimeout())
    assert cb.current_state == STATE_CLOSED


# --- classification ---------------------------------------------------------------------
def test_exceptions_are_classified_failure_ignored_or_success() -> None:
    class Business(Exception):
        pass

    cb = make(
        minimum_calls=1000,
        ignore_exceptions=(KeyError,),
        success_exceptions=(Business,),
        failure_exceptions=(ConnectionError, lambda e: isinstance(e, ValueError) and "bad" in str(e)),
        exclude=[IndexError, lambda e: isinstance(e, AttributeError)],
    )
    assert cb.classify(None) == "success"
    assert cb.classify(ConnectionResetError()) == "failure"
    assert cb.classify(ValueError("bad input")) == "failure"
    assert cb.classify(ValueError("fine")) == "success"  # not a configured failure
    assert cb.classify(KeyError("k")) == "ignored"
    assert cb.classify(Business()) == "success"
    assert cb.classify(IndexError()) == "success"  # pybreaker exclude: not a system error
    assert cb.classify(AttributeError()) == "success"
    assert cb.classify(gevent.GreenletExit()) == "ignored"  # a cancelled call
    assert fail(cb, KeyError("k")) == "ignored"
    assert cb.figures().calls == 0


# --- open -------------------------------------------------------------------------------
def test_open_rejects_without_calling_and_error_is_both_kinds() -> None:
    rec = Recorder()
    clock = FakeClock()
    cb = make(clock, rec, max_consecutive_failures=0)
    fail(cb)
    clock.advance(0.25)
    called = []
    with pytest.raises(CircuitOpen) as info:
        cb.call(called.append, 1)
    assert called == []
    err = info.value
    assert isinstance(err, CircuitBreakerError) and isinstance(err, pybreaker.CircuitBreakerError)
    assert isinstance(err, CircuitBreakerOpen) and err.retry_after == 0.75 and err.state == STATE_OPEN
    assert err.breaker == "t" and not err.retryable
    (ev,) = rec.named("breaker.rejected")
    assert ev.attrs == {"breaker": "t", "state": STATE_OPEN, "retry_after": 0.75}


def test_open_moves_to_half_open_after_reset_timeout() -> None:
    clock = FakeClock()
    cb = make(clock, max_consecutive_failures=0)
    fail(cb)
    clock.advance(0.999)
    assert cb.current_state == STATE_OPEN
    clock.advance(0.001)
    assert cb.current_state == STATE_HALF_OPEN
    assert cb.state.name == STATE_HALF_OPEN


def test_open_duration_grows_with_repeated_openings_and_is_capped() -> None:
    rec = Recorder()
    clock = FakeClock()
    cb = make(clock, rec, max_consecutive_failures=0, half_open_failures=1)
    durations = []
    fail(cb)
    for _ in range(6):
        durations.append(rec.named("breaker.state")[-1].attrs["open_for"])
        clock.advance(durations[-1])
        assert cb.current_state == STATE_HALF_OPEN
        fail(cb)  # the trial fails: reopen
    assert durations == [1.0, 2.0, 3.0, 3.0, 3.0, 3.0]  # 1 s, doubling, capped at 3 s


def test_open_duration_is_jittered_down_with_the_injected_rng() -> None:
    rec = Recorder()
    cb = CircuitBreaker(
        clock=FakeClock(), rng=random.Random(42), bus=rec.bus, max_consecutive_failures=0, reset_jitter=0.1
    )
    fail(cb)
    expected = 1.0 * (1 - 0.1 * random.Random(42).random())
    assert rec.named("breaker.state")[0].attrs["open_for"] == pytest.approx(expected)
    assert 0.9 <= expected < 1.0


def test_closing_resets_the_open_duration_growth() -> None:
    rec = Recorder()
    clock = FakeClock()
    cb = make(clock, rec, max_consecutive_failures=0, half_open_failures=1, half_open_successes=1)
    fail(cb)
    clock.advance(1)
    fail(cb)  # reopen for 2
    clock.advance(2)
    ok(cb)  # close
    assert cb.current_state == STATE_CLOSED
    fail(cb)
    assert rec.named("breaker.state")[-1].attrs["open_for"] == 1.0


# --- half-open --------------------------------------------------------------------------
def half_open(clock: FakeClock, rec: Optional[Recorder] = None, **options: Any) -> CircuitBreaker:
    cb = make(clock, rec, max_consecutive_failures=0, **options)
    fail(cb)
    clock.advance(1)
    assert cb.current_state == STATE_HALF_OPEN
    return cb


def test_half_open_admits_five_trials_and_rejects_the_rest() -> None:
    clock = FakeClock()
    cb = half_open(clock)
    tickets = [cb.admit() for _ in range(5)]
    assert all(t.state == STATE_HALF_OPEN for t in tickets)
    with pytest.raises(CircuitBreakerOpen) as info:
        cb.admit()
    assert info.value.state == STATE_HALF_OPEN and info.value.retry_after == 0.0


def test_three_successes_of_five_close() -> None:
    clock = FakeClock()
    rec = Recorder()
    cb = half_open(clock, rec)
    tickets = [cb.admit() for _ in range(5)]
    cb.record(tickets[0], None)
    cb.record(tickets[1], ConnectionRefused())
    cb.record(tickets[2], None)
    assert cb.current_state == STATE_HALF_OPEN and cb.success_counter == 2
    cb.record(tickets[3], None)
    assert cb.current_state == STATE_CLOSED
    assert rec.named("breaker.state")[-1].attrs["reason"] == "trial_passed"
    assert cb.figures().calls == 0  # a fresh window after closing
    assert cb.record(tickets[4], ConnectionRefused()) == "discarded"  # admitted under half-open


def test_two_failures_of_five_reopen() -> None:
    clock = FakeClock()
    rec = Recorder()
    cb = half_open(clock, rec)
    tickets = [cb.admit() for _ in range(5)]
    cb.record(tickets[0], None)
    cb.record(tickets[1], ConnectionRefused())
    assert cb.current_state == STATE_HALF_OPEN
    cb.record(tickets[2], ConnectionRefused())
    assert cb.current_state == STATE_OPEN
    ev = rec.named("breaker.state")[-1]
    assert ev.attrs["reason"] == "trial_failed" and ev.attrs["open_for"] == 2.0
    assert [cb.record(t, None) for t in tickets[3:]] == ["discarded", "discarded"]
    assert cb.current_state == STATE_OPEN


def test_an_ignored_trial_frees_its_slot() -> None:
    clock = FakeClock()
    cb = half_open(clock, ignore_exceptions=(KeyError,))
    tickets = [cb.admit() for _ in range(5)]
    assert cb.record(tickets[0], KeyError()) == "ignored"
    cb.admit()  # the freed slot
    with pytest.raises(CircuitBreakerOpen):
        cb.admit()


def test_results_admitted_under_an_earlier_state_are_discarded() -> None:
    rec = Recorder()
    cb = make(rec=rec, max_consecutive_failures=1)
    early = cb.admit()
    gen = cb.generation
    fail(cb)
    fail(cb)  # opens
    assert cb.generation == gen + 1
    counter, window = cb.fail_counter, cb.figures()
    assert cb.record(early, ConnectionRefused()) == "discarded"
    assert cb.fail_counter == counter and cb.figures() == window
    assert rec.named("breaker.call")[-1].attrs["outcome"] == "discarded"


def test_breaker_call_event_carries_the_window_figures() -> None:
    rec = Recorder()
    clock = FakeClock()
    cb = make(clock, rec, minimum_calls=100)
    t = cb.admit()
    clock.advance(0.25)
    cb.record(t, RequestTimeout())
    ok(cb)
    a, b = rec.named("breaker.call")
    assert a.attrs == {
        "breaker": "t",
        "state": STATE_CLOSED,
        "outcome": "failure",
        "duration": 0.25,
        "slow": True,
        "calls": 1,
        "failures": 1,
        "slow_calls": 1,
        "failure_rate": 1.0,
        "slow_rate": 1.0,
    }
    assert b.attrs["calls"] == 2 and b.attrs["failure_rate"] == 0.5 and b.attrs["slow"] is False


def test_transition_table_is_complete() -> None:
    assert set(TRANSITIONS.values()) == {STATE_OPEN, STATE_HALF_OPEN, STATE_CLOSED}
    assert TRANSITIONS[(STATE_CLOSED, "trip")] == STATE_OPEN


# --- pybreaker interface ------------------------------------------------------------------
class Listener(CircuitBreakerListener):
    def __init__(self) -> None:
        self.log: list[Any] = []

    def before_call(self, cb: Any, func: Any, *args: Any, **kwargs: Any) -> None:
        self.log.append(("before", args))

    def success(self, cb: Any) -> None:
        self.log.append("success")

    def failure(self, cb: Any, exc: BaseException) -> None:
        self.log.append(("failure", type(exc).__name__))

    def state_change(self, cb: Any, old: Any, new: Any) -> None:
        self.log.append(("state", old.name, new.name))


def test_listeners_see_calls_and_state_changes() -> None:
    listener = Listener()
    cb = CircuitBreaker(clock=FakeClock(), listeners=[listener], max_consecutive_failures=0, bus=EventBus())
    assert cb.call(lambda x: x * 2, 21) == 42
    with pytest.raises(ConnectionResetError):
        cb.call(_raise, ConnectionResetError())
    before, args = listener.log[2]
    assert before == "before" and isinstance(args[0], ConnectionResetError)
    assert listener.log[:2] == [("before", (21,)), "success"]
    assert listener.log[3:] == [("failure", "ConnectionResetError"), ("state", STATE_CLOSED, STATE_OPEN)]


def _raise(exc: BaseException) -> None:
    raise exc


def test_a_broken_listener_does_not_break_calls(caplog: pytest.LogCaptureFixture) -> None:
    class Broken(CircuitBreakerListener):
        def success(self, cb: Any) -> None:
            raise RuntimeError("listener bug")

    cb = CircuitBreaker(clock=FakeClock(), listeners=[Broken()], bus=EventBus())
    assert cb.call(lambda: "fine") == "fine"
    assert "listener" in caplog.text


def test_pybreaker_style_api() -> None:
    clock = FakeClock()
    cb = make(clock)
    assert isinstance(cb, pybreaker.CircuitBreaker)

    @cb
    def double(x: int) -> int:
        return 2 * x

    assert double(4) == 8
    with cb.calling():
        pass
    with pytest.raises(ZeroDivisionError), cb.calling():
        1 / 0  # noqa: B018
    assert cb.fail_counter == 1
    assert cb.open() is False
    assert cb.current_state == STATE_OPEN
    cb.half_open()
    assert cb.state.name == STATE_HALF_OPEN
    cb.close()
    assert cb.current_state == STATE_CLOSED
    cb.state = STATE_OPEN
    assert cb.current_state == STATE_OPEN
    with pytest.raises(ValueError, match="unknown circuit breaker state"):
        cb.state = "ajar"
    with pytest.raises(NotImplementedError):
        cb.call_async(lambda: None)
    assert "state=open" in repr(cb)


def test_throw_new_error_on_trip_raises_circuit_open_from_the_cause() -> None:
    cb = make(max_consecutive_failures=1, throw_new_error_on_trip=True)
    with pytest.raises(ConnectionResetError):
        cb.call(_raise, ConnectionResetError())
    with pytest.raises(CircuitBreakerOpen) as info:
        cb.call(_raise, ConnectionResetError())
    assert isinstance(info.value.__cause__, ConnectionResetError)


def test_breakers_sharing_storage_adopt_each_others_state() -> None:
    clock = FakeClock()
    storage = CircuitMemoryStorage(STATE_CLOSED)
    listener = Listener()
    a = CircuitBreaker(clock=clock, state_storage=storage, max_consecutive_failures=0, bus=EventBus())
    b = CircuitBreaker(clock=clock, state_storage=storage, listeners=[listener], bus=EventBus())
    fail(a)
    assert b.current_state == STATE_OPEN  # written to storage by a, noticed by b
    assert listener.log == [("state", STATE_CLOSED, STATE_OPEN)]
    with pytest.raises(CircuitBreakerOpen):
        b.admit()
    clock.advance(30)  # b only knows storage.opened_at (wall clock) and the base reset timeout
    assert b.current_state == STATE_HALF_OPEN


def test_adopted_open_state_without_opened_at_goes_half_open_at_once() -> None:
    storage = CircuitMemoryStorage(STATE_OPEN)
    cb = CircuitBreaker(clock=FakeClock(), state_storage=storage, bus=EventBus())
    assert cb.current_state == STATE_HALF_OPEN


@pytest.mark.parametrize(
    "options, message",
    [
        ({"failure_rate_threshold": 1.5}, "failure_rate_threshold"),
        ({"slow_call_rate_threshold": -0.1}, "slow_call_rate_threshold"),
        ({"max_consecutive_failures": -1}, "max_consecutive_failures"),
        ({"minimum_calls": 0}, "minimum_calls"),
        ({"half_open_calls": 0}, "half_open_calls"),
        ({"half_open_failures": 0}, "half_open_failures"),
        ({"reset_timeout": 0}, "reset_timeout"),
        ({"reset_timeout": 400, "max_reset_timeout": 300}, "max_reset_timeout"),
        ({"reset_backoff": 0.5}, "reset_backoff"),
        ({"reset_jitter": 1.0}, "reset_jitter"),
        ({"slow_call_duration": 0}, "slow_call_duration"),
        ({"window": 0}, "window"),
        ({"colour": "red"}, "unknown circuit breaker option"),
    ],
)
def test_bad_configuration_is_named(options: dict, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        CircuitBreaker(clock=FakeClock(), **options)


def test_config_object_and_keywords_combine() -> None:
    cb = CircuitBreaker(BreakerConfig(name="x", minimum_calls=3), clock=FakeClock(), half_open_calls=4)
    assert (cb.name, cb.config.minimum_calls, cb.config.half_open_calls) == ("x", 3, 4)


def test_circuit_breaker_decorator_forms() -> None:
    @circuit_breaker
    def bare() -> str:
        return "bare"

    shared = make()

    @circuit_breaker(shared)
    def one() -> int:
        return 1

    @circuit_breaker(shared)
    def two() -> int:
        raise ConnectionResetError()

    assert bare() == "bare" and bare.breaker.name.endswith("bare")  # type: ignore[attr-defined]
    assert one() == 1
    with pytest.raises(ConnectionResetError):
        two()
    assert one.breaker is two.breaker is shared  # type: ignore[attr-defined]
    assert shared.figures().calls == 2


# --- gevent: the call runs outside the lock ----------------------------------------------------
def overlap(cb: Any, n: int, wait: float) -> int:
    active = peak = 0
    all_in = GEvent()

    def work() -> None:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        if active == n:
            all_in.set()
        all_in.wait(timeout=wait)
        active -= 1

    greenlets = [gevent.spawn(cb.call, work) for _ in range(n)]
    gevent.joinall(greenlets, timeout=30, raise_error=True)
    return peak


def test_fifty_greenlets_overlap_through_one_breaker_unpatched(leakcheck: None) -> None:
    cb = CircuitBreaker(bus=EventBus())
    assert overlap(cb, 50, 10.0) == 50
    assert cb.figures().calls == 50 and cb.current_state == STATE_CLOSED


OVERLAP_SCRIPT = textwrap.dedent(
    """
    from gevent import monkey
    monkey.patch_all()
    import json, sys
    sys.path.insert(0, {tests!r})
    import pybreaker
    from nexus_green.events import EventBus
    from nexus_green.resilience.breaker import CircuitBreaker
    from test_resilience_breaker import overlap
    ours = overlap(CircuitBreaker(bus=EventBus()), 50, 10.0)
    theirs = overlap(pybreaker.CircuitBreaker(), 5, 0.05)
    print(json.dumps({{"ours": ours, "pybreaker": theirs}}))
    """
)


def test_fifty_greenlets_overlap_after_patch_all_where_pybreaker_serialises(tmp_path: Any) -> None:
    import os

    script = tmp_path / "overlap.py"
    script.write_text(OVERLAP_SCRIPT.format(tests=os.path.dirname(__file__)))
    proc = subprocess.run([sys.executable, "-W", "error", str(script)], capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == {"ours": 50, "pybreaker": 1}
