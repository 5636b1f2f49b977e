"""Spans, the SpanManager (current span per greenlet, the spawn hook) and @traced."""

from __future__ import annotations

from collections.abc import Iterator

import gevent
import gevent.pool
import greenlet
import pytest

from nexus_green.decorating import UnknownOption
from nexus_green.errors import ConfigurationError
from nexus_green.greenlets import spawn
from nexus_green.testing import run_module_patched
from nexus_green.tracing import (
    AlwaysOff,
    AlwaysOn,
    InMemorySpans,
    Span,
    SpanKind,
    SpanManager,
    StatusCode,
    TraceContext,
    current_span,
    get_default_manager,
    install_spawn_hook,
    set_default_manager,
    traced,
    uninstall_spawn_hook,
)
from nexus_green.tracing.span import monotonic_to_ns, now_ns


@pytest.fixture
def spans() -> InMemorySpans:
    return InMemorySpans()


@pytest.fixture
def tracer(spans: InMemorySpans) -> SpanManager:
    return SpanManager(sampler=AlwaysOn(), processors=[spans])


@pytest.fixture
def default_tracer(tracer: SpanManager) -> Iterator[SpanManager]:
    set_default_manager(tracer)
    yield tracer
    set_default_manager(None)


def test_span_records_attributes_events_errors_and_ends_once(tracer: SpanManager, spans: InMemorySpans) -> None:
    s = tracer.start_span("op", kind=SpanKind.CLIENT, attributes={"a": 1})
    assert not s.ended and s.duration_ns == 0 and "running" in repr(s)
    s.set_attribute("b", "x")
    s.add_event("e1", {"k": 1}, time_ns=s.start_ns + 5)
    s.add_event("e2")
    s.record_error(ValueError("bad value"))
    s.end(s.start_ns + 1000)
    s.end()  # ignored
    assert spans.names() == ["op"]
    assert s.duration_ns == 1000 and "0.001ms" in repr(s)
    assert s.attributes == {"a": 1, "b": "x", "error.type": "ValueError"}
    assert [e.name for e in s.events] == ["e1", "e2", "exception"]
    assert s.events[0].time_ns == s.start_ns + 5
    assert s.events[2].attributes == {"exception.type": "ValueError", "exception.message": "bad value"}
    assert s.status is StatusCode.ERROR and s.status_message == "ValueError: bad value"


def test_end_before_start_is_clamped_to_one_ns(tracer: SpanManager) -> None:
    s = tracer.start_span("op", start_ns=1000)
    s.end(10)
    assert s.end_ns == 1001


def test_unsampled_span_keeps_context_records_nothing(spans: InMemorySpans) -> None:
    m = SpanManager(sampler=AlwaysOff(), processors=[spans])
    with m.span("root") as root:
        root.set_attribute("a", 1)
        root.add_event("e")
        root.record_error(ValueError("x"))
        with m.span("child") as child:
            pass
    assert not root.recording and root.attributes == {} and root.events == [] and root.status is StatusCode.UNSET
    assert child.context.trace_id == root.context.trace_id and child.context.parent_span_id == root.context.span_id
    assert not child.context.sampled
    assert spans.names() == []


def test_clock_helpers_share_one_axis() -> None:
    import time

    assert abs(monotonic_to_ns(time.monotonic()) - now_ns()) < 50_000_000


def test_span_context_manager_nests_records_errors_and_restores(tracer: SpanManager, spans: InMemorySpans) -> None:
    assert current_span() is None
    with pytest.raises(KeyError):
        with tracer.span("outer") as outer:
            with tracer.span("inner", kind=SpanKind.SERVER, attributes={"x": 1}) as inner:
                assert current_span() is inner
            assert current_span() is outer
            raise KeyError("k")
    assert current_span() is None
    assert inner.context.parent_span_id == outer.context.span_id
    assert inner.context.trace_id == outer.context.trace_id and outer.context.parent_span_id == 0
    assert outer.attributes["error.type"] == "KeyError" and inner.status is StatusCode.UNSET
    assert spans.names() == ["inner", "outer"]


def test_greenlet_exit_is_not_an_error(tracer: SpanManager) -> None:
    box: list[Span] = []

    def work() -> None:
        with tracer.span("killed") as s:
            box.append(s)
            gevent.sleep(10)

    g = gevent.spawn(work)
    gevent.sleep(0.01)
    g.kill(block=True, timeout=2)
    assert box[0].ended and box[0].status is StatusCode.UNSET


def test_explicit_parents(tracer: SpanManager) -> None:
    remote = TraceContext(trace_id=77, span_id=88, flags=1, remote=True)
    with tracer.span("outer"):
        root = tracer.start_span("fresh", parent=None)
        child = tracer.start_span("of-remote", parent=remote)
    assert root.context.parent_span_id == 0
    assert (child.context.trace_id, child.context.parent_span_id) == (77, 88)
    with SpanManager.use(child):
        assert current_span() is child
    assert current_span() is None


def test_processor_failure_is_counted_not_raised(spans: InMemorySpans) -> None:
    class Broken:
        def on_end(self, span: Span) -> None:
            raise RuntimeError("exporter bug")

    m = SpanManager(sampler=AlwaysOn(), processors=[Broken()])
    m.add_processor(spans)
    with m.span("a"):
        pass
    assert m.processor_errors == 1 and spans.names() == ["a"] and m.started == 1
    spans.clear()
    assert spans.names() == []
    assert "AlwaysOn" in repr(m)


def test_flush_and_shutdown_reach_processors_that_have_them(spans: InMemorySpans) -> None:
    calls: list[tuple[str, float]] = []

    class P:
        def on_end(self, span: Span) -> None:
            pass

        def flush(self, timeout: float) -> None:
            calls.append(("flush", timeout))

        def shutdown(self, timeout: float) -> None:
            calls.append(("shutdown", timeout))

    m = SpanManager(processors=[spans, P()])
    m.flush(1.0)
    m.shutdown(2.0)
    assert calls == [("flush", 1.0), ("shutdown", 2.0)]


def test_bad_sampler_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="should_sample"):
        SpanManager(sampler=0.1)  # type: ignore[arg-type]


def test_resource_names_the_service() -> None:
    m = SpanManager(service_name="shop", resource={"deployment.environment": "test"})
    assert m.resource == {"service.name": "shop", "deployment.environment": "test"}


def test_default_manager_is_made_once_and_replaceable(tracer: SpanManager) -> None:
    set_default_manager(None)
    first = get_default_manager()
    assert first is get_default_manager() and repr(first.sampler) == "ParentBased(TraceIdRatio(0.1))"
    set_default_manager(tracer)
    assert get_default_manager() is tracer
    set_default_manager(None)


# ------------------------------------------------------------------ greenlets
def test_library_spawn_children_are_children_of_the_parents_span(tracer: SpanManager, spans: InMemorySpans) -> None:
    def child(n: int) -> Span:
        gevent.sleep(0.001 * n)
        with tracer.span(f"child-{n}") as s:
            return s

    with tracer.span("parent") as parent:
        kids = [spawn(child, n) for n in range(3)]
        gevent.joinall(kids, timeout=5, raise_error=True)
    for g in kids:
        s = g.value
        assert s.context.parent_span_id == parent.context.span_id and s.context.trace_id == parent.context.trace_id


def test_plain_gevent_spawn_inherits_only_with_the_hook(tracer: SpanManager) -> None:
    def child() -> Span:
        with tracer.span("child") as s:
            return s

    with tracer.span("parent") as parent:
        plain = gevent.spawn(child).get(timeout=5)
    assert plain.context.trace_id != parent.context.trace_id  # gevent.spawn copies nothing

    assert install_spawn_hook() is True
    try:
        assert install_spawn_hook() is False
        with tracer.span("parent") as parent:
            g = gevent.spawn(child)
            pool_g = gevent.pool.Pool(2).spawn(child)
            hooked, pooled = g.get(timeout=5), pool_g.get(timeout=5)
        for s in (hooked, pooled):
            assert s.context.parent_span_id == parent.context.span_id
        # The child got a copy: its own span did not leak into the parent.
        assert current_span() is None
    finally:
        assert uninstall_spawn_hook() is True
    assert uninstall_spawn_hook() is False


def test_spawn_hook_chains_a_previous_trace_function(tracer: SpanManager) -> None:
    seen: list[str] = []
    previous = greenlet.settrace(lambda event, args: seen.append(event))
    try:
        install_spawn_hook()
        gevent.spawn(lambda: None).get(timeout=5)
        uninstall_spawn_hook()
        assert "switch" in seen
        assert greenlet.gettrace() is not None  # the previous function is back
    finally:
        greenlet.settrace(previous)


# ------------------------------------------------------------------ @traced
def test_traced_bare_and_called(default_tracer: SpanManager, spans: InMemorySpans) -> None:
    @traced
    def inner() -> int:
        return 1

    @traced("outer-op", kind=SpanKind.SERVER, attributes={"shop": "eu"})
    def outer() -> int:
        return inner() + 1

    @traced(name="by-keyword")
    def kw() -> None:
        pass

    @traced()
    def nameless() -> None:
        pass

    assert outer() == 2
    kw()
    nameless()
    by = {s.name: s for s in spans.spans}
    assert set(by) == {
        "test_traced_bare_and_called.<locals>.inner",
        "outer-op",
        "by-keyword",
        "test_traced_bare_and_called.<locals>.nameless",
    }
    assert by["test_traced_bare_and_called.<locals>.inner"].context.parent_span_id == by["outer-op"].context.span_id
    assert by["outer-op"].kind is SpanKind.SERVER and by["outer-op"].attributes == {"shop": "eu"}
    assert outer.__name__ == "outer"


def test_traced_records_the_error_and_reraises(tracer: SpanManager, spans: InMemorySpans) -> None:
    @traced("boom", manager=tracer)
    def boom() -> None:
        raise OSError("disk")

    with pytest.raises(OSError, match="disk"):
        boom()
    assert spans.spans[0].attributes["error.type"] == "OSError"


def test_traced_refuses_bad_options() -> None:
    with pytest.raises(UnknownOption, match="unknown traced option"):
        traced("x", sampler=1)
    with pytest.raises(TypeError, match="span name"):
        traced(42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="twice"):
        traced("a", name="b")
    with pytest.raises(TypeError, match="must be a str"):
        traced(name=3)


def test_module_passes_under_patch_all() -> None:
    run = run_module_patched(__file__)
    assert run.returncode == 0, run.report()
