"""Trace context (ids, traceparent, the header form) and the samplers."""

from __future__ import annotations

import os

import pytest

from nexus_green.errors import ConfigurationError
from nexus_green.tracing import (
    DEFAULT_SAMPLER,
    AlwaysOff,
    AlwaysOn,
    ParentBased,
    TraceContext,
    TraceIdRatio,
    extract,
    inject,
    new_span_id,
    new_trace_id,
    parse_traceparent,
)
from nexus_green.tracing import context as context_mod

W3C = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def test_ids_are_random_in_range_and_never_zero(monkeypatch: pytest.MonkeyPatch) -> None:
    ids = {new_trace_id() for _ in range(1000)}
    assert len(ids) == 1000 and all(0 < i < 1 << 128 for i in ids)
    draws = iter([0, 0, 5])
    monkeypatch.setattr(context_mod, "_rand", lambda bits: next(draws))
    assert new_trace_id() == 5
    draws = iter([0, 9])
    assert new_span_id() == 9


def test_forked_child_draws_other_ids() -> None:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.write(w, f"{new_trace_id():032x}".encode())
        os._exit(0)
    os.close(w)
    child = os.read(r, 64).decode()
    os.close(r)
    os.waitpid(pid, 0)
    assert len(child) == 32 and int(child, 16) != new_trace_id()


def test_zero_and_oversized_ids_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="trace id"):
        TraceContext(trace_id=1 << 128, span_id=1)
    with pytest.raises(ConfigurationError, match="span id"):
        TraceContext(trace_id=1, span_id=0)
    with pytest.raises(ConfigurationError, match="parent span id"):
        TraceContext(trace_id=1, span_id=1, parent_span_id=-1)


def test_hex_forms() -> None:
    ctx = TraceContext(trace_id=0xABC, span_id=0x12, parent_span_id=0x34, flags=1)
    assert ctx.trace_id_hex == "00000000000000000000000000000abc"
    assert ctx.span_id_hex == "0000000000000012"
    assert ctx.parent_span_id_hex == "0000000000000034"
    assert TraceContext(trace_id=1, span_id=1).parent_span_id_hex == ""
    assert ctx.traceparent == "00-00000000000000000000000000000abc-0000000000000012-01"


def test_traceparent_flags_are_read_by_bit() -> None:
    assert parse_traceparent(W3C).sampled
    for flags, sampled in (("00", False), ("01", True), ("02", False), ("03", True), ("ff", True), ("fe", False)):
        ctx = parse_traceparent(W3C[:-2] + flags)
        assert ctx.sampled is sampled, flags
        assert ctx.flags == int(flags, 16)
    ctx = parse_traceparent(W3C)
    assert (ctx.trace_id, ctx.span_id, ctx.remote) == (0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331, True)


def test_traceparent_future_version_may_carry_more_fields() -> None:
    ctx = parse_traceparent("cc-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra")
    assert ctx.sampled


@pytest.mark.parametrize(
    "value, message",
    [
        ("00-abc", "4 dash-separated"),
        ("ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "version 'ff'"),
        ("0x-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "version '0x'"),
        ("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-x", "exactly 4 fields"),
        ("00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01", "lowercase hex"),
        ("00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01", "span id is all zeros"),
        ("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-1", "flags must be 2 hex"),
        ("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-zz", "flags must be 2 hex"),
    ],
)
def test_malformed_traceparent_is_refused_by_name(value: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_traceparent(value)


def test_inject_extract_round_trip_and_forms() -> None:
    ctx = TraceContext(trace_id=0xABC, span_id=0x12, parent_span_id=0x34, flags=1)
    headers = inject(ctx)
    assert headers == {
        "trace-id": "00000000000000000000000000000abc",
        "span-id": "0000000000000012",
        "parent-span-id": "0000000000000034",
        "traceparent": "00-00000000000000000000000000000abc-0000000000000012-01",
    }
    back = extract(headers)
    assert back == TraceContext(0xABC, 0x12, 0x34, 1, True)
    assert "parent-span-id" not in inject(TraceContext(trace_id=1, span_id=2))


def test_extract_without_traceparent_uses_the_plan_headers() -> None:
    back = extract({"trace-id": "0" * 31 + "1", "span-id": "0" * 15 + "2", "parent-span-id": "0" * 15 + "3"})
    assert back == TraceContext(1, 2, 3, 1, True)
    assert extract({"trace-id": "0" * 31 + "1"}) is None
    assert extract({}) is None
    assert extract({"trace-id": "xyz", "span-id": "0" * 15 + "2"}) is None
    assert extract({"traceparent": W3C, "parent-span-id": "nothex"}) is None
    # An unsampled caller: its traceparent flags win.
    assert (
        extract({"traceparent": W3C[:-2] + "00", "trace-id": "0" * 31 + "1", "span-id": "0" * 15 + "2"}).sampled
        is False
    )


def test_default_sampler_is_parent_based_ratio_0_1() -> None:
    assert isinstance(DEFAULT_SAMPLER, ParentBased)
    assert isinstance(DEFAULT_SAMPLER.root, TraceIdRatio) and DEFAULT_SAMPLER.root.ratio == 0.1
    sampled = sum(DEFAULT_SAMPLER.should_sample(None, new_trace_id()) for _ in range(20000))
    assert 1600 < sampled < 2400  # 10% of 20000, well beyond 5 sigma either side


def test_ratio_decides_from_the_low_64_bits_consistently() -> None:
    half = TraceIdRatio(0.5)
    assert half.should_sample(None, (1 << 64) + 5)
    assert not half.should_sample(None, (1 << 63) + 1)
    assert all(half.should_sample(None, t) == half.should_sample(None, t) for t in range(1, 100))
    assert not TraceIdRatio(0.0).should_sample(None, 1)
    assert TraceIdRatio(1).should_sample(None, (1 << 64) - 1)
    assert repr(half) == "TraceIdRatio(0.5)"
    for bad in (-0.1, 1.01, True, "0.5"):
        with pytest.raises(ConfigurationError, match="between 0.0 and 1.0"):
            TraceIdRatio(bad)  # type: ignore[arg-type]


def test_parent_based_follows_the_parent_and_asks_root_otherwise() -> None:
    sampled = TraceContext(trace_id=1, span_id=1, flags=1)
    unsampled = TraceContext(trace_id=1, span_id=1, flags=2)
    on, off = ParentBased(AlwaysOn()), ParentBased(AlwaysOff())
    assert on.should_sample(None, 1) and not off.should_sample(None, 1)
    assert off.should_sample(sampled, 1) and not on.should_sample(unsampled, 1)
    assert AlwaysOn().should_sample(unsampled, 1) and not AlwaysOff().should_sample(sampled, 1)
    assert repr(on) == "ParentBased(AlwaysOn())" and repr(AlwaysOff()) == "AlwaysOff()"
    with pytest.raises(ConfigurationError, match="sampler for roots"):
        ParentBased(0.1)  # type: ignore[arg-type]
