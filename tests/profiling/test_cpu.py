"""PerformanceProfiler: cProfile as a context manager and a decorator (bare and called)."""

from __future__ import annotations

import pstats

import gevent
import pytest

from nexus_green.decorating import UnknownOption
from nexus_green.profiling.cpu import FunctionCost, PerformanceProfiler, profiled


def crunch(n: int) -> int:
    return sum(i * i for i in range(n))


def test_context_manager_finds_the_hot_function_and_accumulates() -> None:
    prof = PerformanceProfiler(sort="tottime", limit=5)
    assert prof.stats() is None and prof.hot_spots() == [] and "no calls" in prof.report()
    with prof:
        crunch(20000)
    with prof:
        crunch(20000)
    assert prof.calls == 2
    spots = prof.hot_spots()
    assert len(spots) <= 5
    rows = [s for s in prof.hot_spots(50) if "crunch" in s.function]
    assert rows and rows[0].calls == 2 and rows[0].cumtime >= rows[0].tottime >= 0
    assert rows[0].per_call == pytest.approx(rows[0].cumtime / 2)
    assert "crunch" in prof.report(50) and "PerformanceProfiler sort=tottime calls=2" in repr(prof)


def test_bare_and_called_decorators_and_greenlets(tmp_path) -> None:  # type: ignore[no-untyped-def]
    @profiled
    def bare(n: int) -> int:
        return crunch(n)

    out = tmp_path / "called.pstats"

    @profiled(sort="cumulative", limit=3, output=str(out))
    def called(n: int) -> int:
        return crunch(n)

    assert bare(100) == crunch(100) and bare.__name__ == "bare"
    assert bare.profiler.calls == 1 and bare.profiler.sort == "cumulative"
    gevent.joinall([gevent.spawn(called, 1000) for _ in range(3)], timeout=10)
    assert called.profiler.calls == 3 and out.exists()
    assert any("crunch" in fn for (_file, _line, fn) in pstats.Stats(str(out)).stats)


def test_recursion_is_measured_once() -> None:
    @profiled
    def fact(n: int) -> int:
        return 1 if n <= 1 else n * fact(n - 1)

    assert fact(10) == 3628800
    assert fact.profiler.calls == 1


def test_bad_options_are_refused() -> None:
    with pytest.raises(UnknownOption, match="colour"):
        profiled(colour="red")
    with pytest.raises(TypeError, match="by keyword"):
        profiled("tottime")
    with pytest.raises(ValueError, match="sort"):
        PerformanceProfiler(sort="fastest")
    with pytest.raises(ValueError, match="limit"):
        PerformanceProfiler(limit=0)
    assert FunctionCost(function="f", calls=0, tottime=0, cumtime=0).per_call == 0.0
