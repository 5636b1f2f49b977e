"""Pipeline ordering, conditions, composition and the zero-overhead empty case."""

from __future__ import annotations

import pytest

from nexus_green.errors import ConfigurationError
from nexus_green.middleware import (
    DEFAULT_ORDER,
    BackpressureMiddleware,
    CacheMiddleware,
    CompressionMiddleware,
    Middleware,
    Pipeline,
    RateLimitMiddleware,
    TwoLevelCache,
    compose,
    when,
)
from nexus_green.middleware.pipeline import order_of, request_matcher
from nexus_green.protocol.messages import Request, Response


class Rec:
    """Records the order requests pass through it."""

    def __init__(self, name: str, log: list, order: int | None = None) -> None:
        self.name = name
        self.log = log
        if order is not None:
            self.order = order

    def __call__(self, request: Request, call_next):  # type: ignore[no-untyped-def]
        self.log.append(self.name)
        resp = call_next(request)
        self.log.append("/" + self.name)
        return resp


def terminal(request: Request) -> Response:
    return Response(body=request.body, fid=request.fid)


def test_empty_pipeline_returns_terminal_itself() -> None:
    assert Pipeline().wrap(terminal) is terminal
    assert len(Pipeline()) == 0


def test_default_order_of_builtin_middlewares() -> None:
    mws = [
        CompressionMiddleware(),
        BackpressureMiddleware(),
        RateLimitMiddleware(),
        CacheMiddleware(TwoLevelCache(l2=None), when=1),
    ]
    p = Pipeline(mws)
    assert [m.name for m in p.middlewares] == ["cache", "rate_limit", "backpressure", "compression"]
    assert [order_of(m) for m in p.middlewares] == sorted(
        DEFAULT_ORDER[k] for k in ("cache", "rate_limit", "backpressure", "compression")
    )
    assert "cache(200) > rate_limit(300)" in repr(p)


def test_sorting_is_stable_and_custom_goes_before_cache() -> None:
    log: list = []
    p = Pipeline([Rec("cache", log, 200), Rec("a", log), Rec("b", log), Rec("outer", log, 100)])
    assert [m.name for m in p.middlewares] == ["outer", "a", "b", "cache"]
    p.wrap(terminal)(Request())
    assert log == ["outer", "a", "b", "cache", "/cache", "/b", "/a", "/outer"]


def test_sort_false_keeps_given_order() -> None:
    log: list = []
    p = Pipeline([Rec("z", log, 500), Rec("a", log, 100)], sort=False)
    p.wrap(terminal)(Request())
    assert log == ["z", "a", "/a", "/z"]


def test_chain_built_once_at_wrap_time() -> None:
    log: list = []
    p = Pipeline([Rec("a", log)])
    h = p.wrap(terminal)
    p.add(Rec("late", log))  # does not change the handler already built
    h(Request())
    assert log == ["a", "/a"]
    assert [m.name for m in p.middlewares] == ["a", "late"]


def test_add_rejects_non_middleware_and_bad_order() -> None:
    with pytest.raises(ConfigurationError, match="not a middleware"):
        Pipeline([object()])  # type: ignore[list-item]
    with pytest.raises(ConfigurationError, match="non-int order"):
        Pipeline([Rec("x", [], order="first")])  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="non-int order"):
        order_of(Rec("x", [], order=True))  # type: ignore[arg-type]


def test_when_by_fid_set_and_predicate() -> None:
    log: list = []
    c = when({1, 2}, Rec("only12", log, 300))
    assert c.order == 300 and c.name == "when(only12)" and "only12" in repr(c)
    h = Pipeline([c, when(lambda r: r.endpoint == "e", Rec("e", log))]).wrap(terminal)
    for fid, endpoint in [(1, ""), (3, "e"), (4, "")]:
        h(Request(fid=fid, endpoint=endpoint))
    assert log == ["e", "/e", "only12", "/only12"] or log == ["only12", "/only12", "e", "/e"]
    assert isinstance(c, Middleware)


def test_request_matcher_validation() -> None:
    assert request_matcher(5)(Request(fid=5)) and not request_matcher(5)(Request(fid=6))
    with pytest.raises(ConfigurationError):
        request_matcher(True)
    with pytest.raises(ConfigurationError):
        request_matcher(3.5)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="Fids must be ints"):
        request_matcher(["a"])  # type: ignore[list-item]


def test_compose_runs_members_in_order_and_caches_chain() -> None:
    log: list = []
    c = compose(Rec("x", log, 400), Rec("y", log, 300))
    assert c.name == "x+y" and c.order == 300 and "x+y" in repr(c)
    assert compose(Rec("x", log), order=7).order == 7
    h = Pipeline([c, Rec("outer", log, 100)]).wrap(terminal)
    assert h(Request(body=b"b")).body == b"b"
    first = c._built
    h(Request())
    assert c._built is first  # same call_next: chain reused
    assert log[:6] == ["outer", "x", "y", "/y", "/x", "/outer"]
    with pytest.raises(ConfigurationError):
        compose()


def test_middleware_may_short_circuit_and_see_errors() -> None:
    class Answer:
        name = "answer"

        def __call__(self, request, call_next):  # type: ignore[no-untyped-def]
            return Response(body=b"local")

    def boom(request: Request) -> Response:
        raise RuntimeError("wire down")

    assert Pipeline([Answer()]).wrap(boom)(Request()).body == b"local"
    with pytest.raises(RuntimeError, match="wire down"):
        Pipeline([Pipeline.identity()]).wrap(boom)(Request())


def test_plain_functions_and_bound_call_are_both_middlewares() -> None:
    log: list = []

    def stamp(request: Request, call_next):  # type: ignore[no-untyped-def]
        log.append("stamp")
        return call_next(request.with_headers({"x": "1"}))

    stamp.name = "stamp"  # type: ignore[attr-defined]
    stamp.order = 120  # type: ignore[attr-defined]
    handler = Pipeline([Rec("rec", log, order=130), stamp]).wrap(lambda r: Response(body=r.headers["x"].encode()))  # type: ignore[list-item]
    assert handler(Request()).body == b"1"
    assert log == ["stamp", "rec", "/rec"]
