"""MemoryProfiler: top sites, growth, and leak suspects for a growing list but not a steady one."""

from __future__ import annotations

import tracemalloc

import pytest

from nexus_green.profiling.memory import AllocationSite, MemoryProfiler


def grow(hoard: list, n: int = 200) -> None:
    hoard.extend(bytearray(500) for _ in range(n))


def churn(n: int = 200) -> int:
    # Steady: allocates as much, frees it all (a warm cache does not grow either).
    return len([bytearray(500) for _ in range(n)])


def test_growing_list_is_a_suspect_and_a_steady_one_is_not() -> None:
    hoard: list = []
    steady: list = []
    with MemoryProfiler(consecutive=3, min_growth=50_000) as mem:
        steady.extend(bytearray(500) for _ in range(400))  # made once, then kept as it is
        for _ in range(5):
            grow(hoard)
            churn()
            mem.snapshot()
    suspects = mem.leak_suspects()
    sites = [s.site for s in suspects]
    assert any("test_memory.py" in s for s in sites), sites
    grow_line = grow.__code__.co_firstlineno + 1
    assert any(s.endswith(f"test_memory.py:{grow_line}") for s in sites), sites
    steady_line = test_growing_list_is_a_suspect_and_a_steady_one_is_not.__code__.co_firstlineno + 4
    churn_line = churn.__code__.co_firstlineno + 2
    assert not any(s.endswith((f":{steady_line}", f":{churn_line}")) for s in sites), sites
    top = suspects[0]
    assert top.size >= 3 * 100_000 and top.count >= 3 * 200
    assert not mem.tracing and mem.snapshots == 4  # the last consecutive + 1 kept
    assert mem.traced_peak > 0
    growth = mem.growth()
    assert growth and growth[0].size >= 100_000


def test_growth_that_stops_is_not_a_suspect() -> None:
    hoard: list = []
    with MemoryProfiler(consecutive=2, min_growth=10_000) as mem:
        for i in range(4):
            if i < 2:
                grow(hoard)
            mem.snapshot()
    assert mem.leak_suspects() == []


def test_top_and_empty_states() -> None:
    mem = MemoryProfiler()
    assert mem.top() == [] and mem.growth() == [] and mem.leak_suspects() == []
    with pytest.raises(RuntimeError, match="start"):
        mem.snapshot()
    with mem:
        data = [bytes(1000) for _ in range(300)]
        top = mem.snapshot(limit=3)
        assert len(top) <= 3 and top[0].size >= 300_000
        assert mem.growth() == []
    assert len(data) == 300 and "snapshots=1" in repr(mem)
    assert AllocationSite(site="x", size=1, count=0).per_block == 0.0


def test_tracebacks_and_an_outer_tracer_are_kept() -> None:
    tracemalloc.start(5)
    try:
        mem = MemoryProfiler(frames=3).start()
        kept = [bytearray(2000) for _ in range(100)]
        site = mem.snapshot()[0].site
        mem.stop()
        assert tracemalloc.is_tracing()  # it did not start tracing, so it does not stop it
        assert " < " in site and len(kept) == 100
    finally:
        tracemalloc.stop()


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="frames"):
        MemoryProfiler(frames=0)
    with pytest.raises(ValueError, match="consecutive"):
        MemoryProfiler(consecutive=0)
