"""Rate limit policies tested exactly on a FakeClock; the runner, middleware and decorator."""

from __future__ import annotations

import pytest

from nexus_green.clock import FakeClock
from nexus_green.deadlines import deadline
from nexus_green.errors import ConfigurationError, RateLimited
from nexus_green.events import EventBus
from nexus_green.middleware import (
    LeakyBucket,
    RateLimiter,
    RateLimitMiddleware,
    SlidingWindow,
    TokenBucket,
    rate_limited,
)
from nexus_green.protocol.messages import Request, Response


def ok(request: Request) -> Response:
    return Response(fid=request.fid)


# --- token bucket ---------------------------------------------------------------------
def test_token_bucket_defaults_burst_then_refill() -> None:
    clock = FakeClock()
    b = TokenBucket(clock=clock)
    assert (b.capacity, b.refill_rate) == (100, 10)
    assert all(b.acquire().allowed for _ in range(100))  # burst of capacity
    d = b.acquire()
    assert not d.allowed and d.retry_after == pytest.approx(0.1)
    clock.advance(0.5)
    assert b.tokens == pytest.approx(5)
    assert [b.acquire().allowed for _ in range(6)] == [True] * 5 + [False]
    clock.advance(1000)
    assert b.tokens == 100  # never above capacity
    assert "TokenBucket" in repr(b)


def test_token_bucket_cost_and_validation() -> None:
    clock = FakeClock()
    b = TokenBucket(capacity=10, refill_rate=2, clock=clock)
    assert b.acquire(7).remaining == pytest.approx(3)
    d = b.acquire(5)
    assert not d.allowed and d.retry_after == pytest.approx(1.0)
    with pytest.raises(ConfigurationError, match="exceeds"):
        b.acquire(11)
    with pytest.raises(ConfigurationError, match="cost must be positive"):
        b.acquire(0)
    for bad in (0, -1, float("inf"), True, "10"):
        with pytest.raises(ConfigurationError):
            TokenBucket(capacity=bad)  # type: ignore[arg-type]
    assert b.fresh().tokens == 10 and b.fresh().clock is clock


# --- leaky bucket ---------------------------------------------------------------------
def test_leaky_bucket_shapes_and_rejects_when_full() -> None:
    clock = FakeClock()
    b = LeakyBucket(clock=clock)
    assert (b.capacity, b.leak_rate) == (100, 10)
    delays = [b.acquire(max_delay=100).delay for _ in range(100)]
    assert delays[:3] == [0.0, pytest.approx(0.1), pytest.approx(0.2)]
    assert delays[-1] == pytest.approx(9.9)
    full = b.acquire(max_delay=100)
    assert not full.allowed and full.retry_after == pytest.approx(0.1)  # rejects when full
    clock.advance(1.0)
    assert b.level == pytest.approx(90)
    assert b.acquire(max_delay=100).delay == pytest.approx(9.0)
    assert "LeakyBucket" in repr(b) and b.fresh().level == 0


def test_leaky_bucket_polices_when_no_delay_accepted() -> None:
    clock = FakeClock()
    b = LeakyBucket(capacity=100, leak_rate=10, clock=clock)
    assert b.acquire().allowed
    d = b.acquire()
    assert not d.allowed and d.retry_after == pytest.approx(0.1)
    clock.advance(0.1)
    assert b.acquire().allowed


# --- sliding window -------------------------------------------------------------------
def test_sliding_window_defaults_and_exact_expiry() -> None:
    clock = FakeClock()
    w = SlidingWindow(clock=clock)
    assert (w.limit, w.window, w.granularity) == (1000, 60, 1)
    for _ in range(600):
        assert w.acquire().allowed
    clock.advance(30.5)  # t = 30.5, bucket 30
    for _ in range(400):
        assert w.acquire().allowed
    d = w.acquire()
    assert not d.allowed and d.retry_after == pytest.approx(29.5)  # bucket 0 leaves at t=60
    clock.advance(29.5)
    assert w.count == 400
    assert w.acquire().allowed
    clock.advance(30)  # t=90: bucket 30 leaves
    assert w.count == 1
    assert "SlidingWindow" in repr(w) and w.fresh().count == 0


def test_sliding_window_validation_and_cost() -> None:
    clock = FakeClock()
    with pytest.raises(ConfigurationError, match="granularity"):
        SlidingWindow(window=1, granularity=2, clock=clock)
    w = SlidingWindow(limit=5, window=10, granularity=1, clock=clock)
    assert w.acquire(3).allowed
    clock.advance(1)
    assert w.acquire(2).allowed
    d = w.acquire(4)  # needs both buckets gone: the second leaves at t=11
    assert not d.allowed and d.retry_after == pytest.approx(10)
    d = w.acquire(3)
    assert d.retry_after == pytest.approx(9)
    with pytest.raises(ConfigurationError):
        w.acquire(6)


# --- the runner -----------------------------------------------------------------------
def test_limiter_raise_mode_counts_and_emits() -> None:
    clock = FakeClock()
    bus = EventBus()
    seen: list = []
    bus.subscribe(seen.append, prefix="ratelimit.")
    r = RateLimiter(TokenBucket(capacity=1, refill_rate=1, clock=clock), bus=bus, name="t")
    assert r.acquire() == 0.0
    with pytest.raises(RateLimited) as ei:
        r.acquire()
    assert ei.value.retry_after == pytest.approx(1.0) and ei.value.retryable is False
    assert r.admitted == 1 and r.rejected == 1
    assert [(e.name, e.attrs["limiter"]) for e in seen] == [("ratelimit.rejected", "t")]
    assert "rejected=1" in repr(r)
    assert clock.sleeps == []  # raise mode never sleeps


def test_limiter_wait_mode_waits_exactly_and_is_bounded() -> None:
    clock = FakeClock()
    bus = EventBus()
    seen: list = []
    bus.subscribe(seen.append, prefix="ratelimit.")
    r = RateLimiter(TokenBucket(capacity=1, refill_rate=4, clock=clock), on_limit="wait", max_wait=1.0, bus=bus)
    assert r.acquire() == 0
    assert r.acquire() == pytest.approx(0.25)
    assert clock.now() == pytest.approx(0.25)
    assert r.delayed == 1 and seen[-1].name == "ratelimit.delayed"
    slow = RateLimiter(TokenBucket(capacity=1, refill_rate=0.5, clock=clock), on_limit="wait", max_wait=1.0)
    slow.acquire()
    t0 = clock.now()
    with pytest.raises(RateLimited) as ei:
        slow.acquire()  # next slot 2 s away > max_wait 1 s: raise without sleeping
    assert ei.value.retry_after == pytest.approx(2.0) and clock.now() == t0


def test_limiter_wait_respects_deadline() -> None:
    clock = FakeClock()
    r = RateLimiter(TokenBucket(capacity=1, refill_rate=2, clock=clock), on_limit="wait", max_wait=10)
    r.acquire()
    with deadline(0.2, clock=clock):
        with pytest.raises(RateLimited):
            r.acquire()  # 0.5 s needed, 0.2 s left


def test_limiter_wait_with_leaky_bucket_delay() -> None:
    clock = FakeClock()
    r = RateLimiter(LeakyBucket(capacity=3, leak_rate=10, clock=clock), on_limit="wait", max_wait=0.15)
    assert [r.acquire() for _ in range(2)] == [0.0, pytest.approx(0.1)]
    # queue: the third would start 0.1 after now (level drained by the sleep) -> fine
    assert r.acquire() == pytest.approx(0.1)


def test_limiter_per_key_and_validation() -> None:
    clock = FakeClock()
    r = RateLimiter(SlidingWindow(limit=1, window=1, clock=clock), max_keys=2)
    r.acquire("a")
    r.acquire("b")
    with pytest.raises(RateLimited):
        r.acquire("a")
    r.acquire("c")  # evicts the least recently used key ("b")
    r.acquire("b")  # a fresh window for b
    assert r.policy_for(None) is r.policy
    with pytest.raises(ConfigurationError):
        RateLimiter(on_limit="drop")
    with pytest.raises(ConfigurationError):
        RateLimiter(max_wait=-1)
    assert isinstance(RateLimiter().policy, TokenBucket)


# --- middleware and decorator ---------------------------------------------------------
def test_middleware_keys() -> None:
    clock = FakeClock()

    def mw(per):  # type: ignore[no-untyped-def]
        return RateLimitMiddleware(RateLimiter(TokenBucket(capacity=1, refill_rate=1, clock=clock)), per=per)

    by_fid = mw("fid")
    by_fid(Request(fid=1), ok)
    by_fid(Request(fid=2), ok)
    with pytest.raises(RateLimited):
        by_fid(Request(fid=1), ok)
    by_ep = mw("endpoint")
    by_ep(Request(fid=1, endpoint="a"), ok)
    by_ep(Request(fid=1, endpoint="b"), ok)
    with pytest.raises(RateLimited):
        by_ep(Request(fid=2, endpoint="a"), ok)
    both = mw("fid+endpoint")
    both(Request(fid=1, endpoint="a"), ok)
    both(Request(fid=2, endpoint="a"), ok)
    glob = mw("global")
    glob(Request(fid=1), ok)
    with pytest.raises(RateLimited):
        glob(Request(fid=2), ok)
    custom = mw(lambda r: r.headers.get("user"))
    custom(Request(headers={"user": "u1"}), ok)
    custom(Request(headers={"user": "u2"}), ok)
    with pytest.raises(ConfigurationError, match="per must be"):
        RateLimitMiddleware(per="user")
    assert "RateLimitMiddleware" in repr(by_fid)


def test_middleware_cost_function_and_not_calling_next_on_reject() -> None:
    clock = FakeClock()
    calls: list = []
    mw = RateLimitMiddleware(
        RateLimiter(TokenBucket(capacity=10, refill_rate=1, clock=clock)), per="global", cost=lambda r: len(r.body)
    )
    mw(Request(body=b"x" * 8), lambda r: calls.append(r) or Response())
    with pytest.raises(RateLimited):
        mw(Request(body=b"x" * 3), lambda r: calls.append(r) or Response())
    assert len(calls) == 1


def test_decorator_with_limiter_and_wait() -> None:
    clock = FakeClock()
    limiter = RateLimiter(TokenBucket(capacity=1, refill_rate=10, clock=clock), on_limit="wait")

    @rate_limited(limiter)
    def f(x: int) -> int:
        return x + 1

    assert f(1) == 2 and f(2) == 3
    assert clock.now() == pytest.approx(0.1)
    assert f.limiter is limiter  # type: ignore[attr-defined]
    assert f.__name__ == "f"

    @rate_limited(SlidingWindow(limit=1, window=5, clock=clock), cost=1)
    def g() -> str:
        return "g"

    assert g() == "g"
    with pytest.raises(RateLimited, match="'g'"):
        g()


# --- the fast path ----------------------------------------------------------------------
@pytest.mark.parametrize(
    "make",
    [
        lambda clock: TokenBucket(capacity=5, refill_rate=3, clock=clock),
        lambda clock: LeakyBucket(capacity=5, leak_rate=3, clock=clock),
        lambda clock: SlidingWindow(limit=5, window=2, granularity=0.5, clock=clock),
    ],
    ids=["token", "leaky", "window"],
)
def test_try_acquire_admits_exactly_what_acquire_admits_without_delay(make) -> None:  # type: ignore[no-untyped-def]
    import random

    rng = random.Random(7)
    clock = FakeClock()
    fast, slow = make(clock), make(clock)
    answers = []
    for _ in range(2000):
        cost = rng.choice([1.0, 1.0, 1.0, 2.0, 0.5])
        got = fast.try_acquire(cost)
        assert got == slow.acquire(cost).allowed
        answers.append(got)
        clock.advance(rng.choice([0.0, 0.0, 0.01, 0.1, 0.37, 1.0]))
    assert 200 < sum(answers) < 1900  # both admissions and refusals were exercised
    with pytest.raises(ConfigurationError, match="cost must be positive"):
        fast.try_acquire(0)
    with pytest.raises(ConfigurationError, match="exceeds"):
        fast.try_acquire(6)


def test_refused_try_acquire_leaves_the_policy_unchanged() -> None:
    clock = FakeClock()
    b = LeakyBucket(capacity=10, leak_rate=10, clock=clock)
    assert b.try_acquire()
    assert not b.try_acquire() and not b.try_acquire()  # one queued ahead: would have to wait
    assert b.level == pytest.approx(1)
    clock.advance(0.1)
    assert b.try_acquire()
    t = TokenBucket(capacity=1, refill_rate=1, clock=clock)
    assert t.try_acquire() and not t.try_acquire() and t.tokens == 0
    clock.advance(0.5)
    assert not t.try_acquire() and t.tokens == pytest.approx(0.5)


def test_limiter_last_key_cache_follows_lru_eviction() -> None:
    clock = FakeClock()
    r = RateLimiter(TokenBucket(capacity=2, refill_rate=1, clock=clock), max_keys=2)
    r.acquire("a")
    r.acquire("a")  # the cached fast path of key "a"
    with pytest.raises(RateLimited):
        r.acquire("a")
    r.acquire("b")
    r.acquire("c")  # evicts "a", the least recently used
    assert "a" not in r._keyed and r.policy_for("b").tokens == 1  # type: ignore[attr-defined]
    r.acquire("a")  # a fresh, full bucket
    r.acquire("a")
    with pytest.raises(RateLimited):
        r.acquire("a")
    assert r.admitted == 6 and r.rejected == 2
    g = RateLimiter(TokenBucket(capacity=1, refill_rate=1, clock=clock))
    g.acquire(None)
    with pytest.raises(RateLimited):
        g.acquire(None)  # key None uses the template itself, cached too
    assert g.policy.tokens == 0  # type: ignore[attr-defined]


def test_limiter_with_a_policy_without_fast_path() -> None:
    clock = FakeClock()

    class OnlyAcquire:
        """A custom policy: every other call admitted (no try_acquire)."""

        def __init__(self) -> None:
            self.clock = clock
            self.calls = 0

        def acquire(self, cost: float = 1.0, max_delay: float = 0.0):  # type: ignore[no-untyped-def]
            from nexus_green.middleware import RateDecision

            self.calls += 1
            return RateDecision(allowed=self.calls % 2 == 1, retry_after=0.5)

        def fresh(self) -> OnlyAcquire:
            return OnlyAcquire()

    r = RateLimiter(OnlyAcquire())  # type: ignore[arg-type]
    assert r.acquire("k") == 0.0
    with pytest.raises(RateLimited) as ei:
        r.acquire("k")
    assert ei.value.retry_after == 0.5 and r.policy_for("k").calls == 2  # type: ignore[attr-defined]
