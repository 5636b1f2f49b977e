"""The sketch's relative-error bound, checked against exact percentiles and the ddsketch package."""

from __future__ import annotations

import math
import random

import pytest
from ddsketch import DDSketch as ReferenceSketch

from nexus_green.errors import ConfigurationError
from nexus_green.monitoring.sketch import DDSketch

QUANTILES = (0.5, 0.95, 0.99, 0.999)


def exact(sorted_values: list[float], q: float) -> float:
    """The exact quantile with 'lower' interpolation: the sample at rank floor(q * (n - 1))."""
    return sorted_values[int(math.floor(q * (len(sorted_values) - 1)))]


def samples(kind: str, n: int, rng: random.Random) -> list[float]:
    if kind == "lognormal":  # latency-like: milliseconds with a long tail
        return [rng.lognormvariate(-6.0, 1.2) for _ in range(n)]
    if kind == "pareto":  # heavy tail
        return [0.001 * rng.paretovariate(1.5) for _ in range(n)]
    if kind == "uniform":
        return [rng.uniform(0.0001, 2.0) for _ in range(n)]
    if kind == "bimodal":  # cache hits and misses
        return [rng.gauss(0.0005, 0.00005) if rng.random() < 0.9 else rng.gauss(0.05, 0.005) for _ in range(n)]
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["lognormal", "pareto", "uniform", "bimodal"])
@pytest.mark.parametrize("seed", [1, 2])
def test_percentiles_within_one_percent_of_exact_on_large_samples(kind: str, seed: int) -> None:
    rng = random.Random(seed)
    values = samples(kind, 200_000, rng)
    sketch = DDSketch(relative_accuracy=0.01)
    for v in values:
        sketch.add(v)
    values.sort()
    for q, got in zip(QUANTILES, sketch.quantiles(QUANTILES), strict=True):
        want = exact(values, q)
        assert got is not None
        assert abs(got - want) <= 0.01 * abs(want) + 1e-12, (kind, q, got, want)
    assert sketch.count == len(values)
    assert sketch.min == values[0] and sketch.max == values[-1]
    assert sketch.sum == pytest.approx(math.fsum(values), rel=1e-9)


@pytest.mark.parametrize("accuracy", [0.01, 0.005, 0.001])
def test_tighter_accuracy_bounds_hold_too(accuracy: float) -> None:
    rng = random.Random(7)
    values = samples("lognormal", 50_000, rng)
    sketch = DDSketch(accuracy, max_buckets=100_000)
    for v in values:
        sketch.add(v)
    values.sort()
    for q in QUANTILES + (0.0, 0.25, 1.0):
        want = exact(values, q)
        got = sketch.quantile(q)
        assert got is not None and abs(got - want) <= accuracy * want + 1e-12


def test_agrees_with_the_ddsketch_package() -> None:
    rng = random.Random(3)
    values = samples("pareto", 100_000, rng)
    ours, ref = DDSketch(0.01), ReferenceSketch(0.01)
    for v in values:
        ours.add(v)
        ref.add(v)
    values.sort()
    for q in QUANTILES:
        theirs = ref.get_quantile_value(q)
        mine = ours.quantile(q)
        assert mine is not None
        # Both are within 1 % of the exact value, so within ~2 % of each other.
        assert abs(mine - theirs) <= 0.0201 * theirs
        assert abs(theirs - exact(values, q)) <= 0.01 * exact(values, q) + 1e-12
    assert ours.count == ref.count
    assert ours.sum == pytest.approx(ref.sum)


def test_merge_of_parts_equals_the_whole() -> None:
    rng = random.Random(5)
    values = samples("lognormal", 30_000, rng)
    whole = DDSketch.from_values(values)
    parts = [DDSketch.from_values(values[i::3]) for i in range(3)]
    merged = DDSketch()
    for p in parts:
        merged.merge(p)
    merged.merge(DDSketch())  # merging an empty sketch changes nothing
    assert merged.quantiles(QUANTILES) == whole.quantiles(QUANTILES)
    assert (merged.count, merged.min, merged.max) == (whole.count, whole.min, whole.max)


def test_since_returns_only_new_values() -> None:
    s = DDSketch()
    for v in (0.001, 0.002, 0.003):
        s.add(v)
    before = s.copy()
    for v in (1.0, 2.0, 3.0, 4.0):
        s.add(v)
    d = s.since(before)
    assert d.count == 4 and d.sum == pytest.approx(10.0)
    assert abs(d.quantile(0.5) - 2.0) <= 0.02  # type: ignore[operator]
    assert 0.99 <= d.min <= 1.0 and 3.96 <= d.max <= 4.0
    assert s.since(s.copy()).count == 0
    with pytest.raises(ConfigurationError, match="not a past copy"):
        before.since(s)


def test_negative_and_zero_values() -> None:
    s = DDSketch.from_values([-4.0, -2.0, 0.0, 0.0, 3.0])
    assert s.zero_count == 2 and s.buckets == 4
    q = s.quantiles([0.0, 0.25, 0.5, 1.0])
    assert q[0] == -4.0 and abs(q[1] + 2.0) <= 0.02 and q[2] == 0.0 and q[3] == 3.0
    before = s.copy()
    s.add(-1.0)
    s.add(0.0)
    d = s.since(before)
    assert d.count == 2 and abs(d.min + 1.0) <= 0.01 and d.max == 0.0


def test_bucket_count_is_bounded_by_collapsing_the_lowest() -> None:
    s = DDSketch(0.01, max_buckets=50)
    for i in range(1, 2000):
        s.add(1.0001**i * 1e-6 * (1.05**i))
    assert s.buckets <= 50
    values = sorted(1.0001**i * 1e-6 * (1.05**i) for i in range(1, 2000))
    # The top of the distribution keeps its accuracy.
    assert abs(s.quantile(0.99) - exact(values, 0.99)) <= 0.01 * exact(values, 0.99)  # type: ignore[operator]
    other = DDSketch(0.01, max_buckets=50)
    for i in range(1, 100):
        other.add(1e-9 * 3**i)
    s.merge(other)
    assert s.buckets <= 50


def test_empty_sketch_and_bad_input() -> None:
    s = DDSketch()
    assert s.quantile(0.5) is None and s.quantiles([0.1, 0.9]) == [None, None]
    with pytest.raises(ConfigurationError, match="quantile must be within"):
        s.quantile(1.5)
    with pytest.raises(ConfigurationError, match="relative_accuracy"):
        DDSketch(0.0)
    with pytest.raises(ConfigurationError, match="min_value"):
        DDSketch(min_value=0)
    with pytest.raises(ConfigurationError, match="max_buckets"):
        DDSketch(max_buckets=1)
    with pytest.raises(ConfigurationError, match="different relative_accuracy"):
        s.merge(DDSketch(0.02))
    with pytest.raises(TypeError, match="DDSketch"):
        s.merge([1.0])  # type: ignore[arg-type]
    s.add(1.0)
    s.clear()
    assert s.count == 0 and s.buckets == 0 and s.quantile(0.5) is None
    assert "count=0" in repr(s)
