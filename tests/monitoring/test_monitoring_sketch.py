"""The sketch's relative-error bound, checked against exact percentiles and the ddsketch package."""

from __future__ import annotations

import math
import random
import struct

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
    # Within the relative accuracy of the true extremes of the new values.
    assert abs(d.min - 1.0) <= 0.01 and abs(d.max - 4.0) <= 0.04
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


@pytest.mark.parametrize("accuracy", [0.01, 0.005, 0.001])
@pytest.mark.parametrize("kind", ["lognormal", "pareto", "uniform", "bimodal"])
def test_add_many_fills_the_same_buckets_as_add(accuracy: float, kind: str) -> None:
    rng = random.Random(11)
    one, bulk = (DDSketch(accuracy, max_buckets=100_000), DDSketch(accuracy, max_buckets=100_000))
    # Up to 7 bits per bucket the bulk path buckets the float32 rounding of
    # each value; the reference does the same so the buckets must be equal.
    rounded = DDSketch(accuracy, max_buckets=100_000)
    for _ in range(5):  # several batches, so the min/max shortcut is exercised
        values = samples(kind, 4000, rng)
        for v in values:
            one.add(v)
            rounded.add(struct.unpack("f", struct.pack("f", v))[0] if bulk.mantissa_bits <= 7 else v)
        bulk.add_many(values)
    assert bulk._pos == rounded._pos and bulk._neg == one._neg and bulk.zero_count == one.zero_count
    moved = sum(abs(bulk._pos.get(k, 0) - one._pos.get(k, 0)) for k in set(one._pos) | set(bulk._pos))
    assert moved <= 0.001 * one.count  # only values within 2**-24 of a boundary move
    assert (bulk.count, bulk.min, bulk.max) == (one.count, one.min, one.max)
    assert bulk.sum == pytest.approx(one.sum, rel=1e-12)


def test_add_many_float32_rounding_stays_within_the_bound() -> None:
    # Values just under a bucket boundary round up into the next bucket as
    # float32; the quantile bound still holds for them.
    s = DDSketch(0.01)
    edge = 1.0 + 1 / 64  # a bucket boundary for m = 6
    values = [edge * (1 - 2.0**-30), edge * (1 - 2.0**-26)]
    s.add_many(values)
    assert s.count == 2 and s.min == min(values) and s.max == max(values)
    for q in (0.0, 0.5, 1.0):
        got = s.quantile(q)
        assert got is not None and abs(got - edge) <= 0.01 * edge


@pytest.mark.parametrize(
    "values",
    [
        [0.001, 0.0, 0.002],  # a zero
        [0.001, -0.5, 0.002],  # a negative
        [0.001, 1e39, 0.002],  # beyond float32
        [0.001, 1e-12, 0.002],  # under min_value: counts as zero
        [3, 1, 2],  # ints
    ],
)
def test_add_many_takes_the_general_path_for_what_the_fast_one_cannot_hold(values: list[float]) -> None:
    bulk, one = DDSketch(), DDSketch()
    bulk.add_many(values)
    for v in values:
        one.add(v)
    assert (bulk._pos, bulk._neg, bulk.zero_count) == (one._pos, one._neg, one.zero_count)
    assert (bulk.count, bulk.min, bulk.max) == (one.count, one.min, one.max)


def test_add_many_below_the_float32_range_with_a_tiny_min_value() -> None:
    # float32 cannot hold 1e-40 as a normal number: the float64 keys are used instead.
    bulk, one = DDSketch(min_value=1e-300), DDSketch(min_value=1e-300)
    values = [1e-40, 1e-39, 5e-38, 0.5]
    bulk.add_many(values)
    for v in values:
        one.add(v)
    assert bulk._pos == one._pos and bulk.min == 1e-40 and bulk.count == 4


def test_nan_and_infinity_are_refused_and_leave_the_sketch_unchanged() -> None:
    s = DDSketch()
    s.add_many([0.001, 0.002])
    for bad in (math.nan, math.inf, -math.inf):
        with pytest.raises(ValueError, match="finite numbers"):
            s.add(bad)
        with pytest.raises(ValueError, match="finite numbers"):
            s.add_many([0.003, bad])
    assert s.count == 2 and s.max == 0.002  # a refused batch records nothing
    s.add_many([])
    assert s.count == 2


@pytest.fixture(params=["numpy", "stdlib"])
def counting(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test with the numpy counting path and again with the stdlib one."""
    import nexus_green.monitoring.sketch as sk

    if request.param == "stdlib":
        monkeypatch.setattr(sk, "_np_module", False)
    else:
        import numpy  # noqa: F401  -- "already imported by the application": add_many's default uses it

        monkeypatch.setattr(sk, "_np_module", None)  # looked up again on first use
    return str(request.param)


@pytest.mark.parametrize("typecode", ["f", "d"])
def test_connection_arrays_are_bucketed_in_place_by_both_paths(counting: str, typecode: str) -> None:
    from array import array

    from nexus_green.monitoring.sketch import NUMPY_MIN_BATCH

    rng = random.Random(21)
    values = array(typecode, samples("lognormal", NUMPY_MIN_BATCH * 3, rng))
    bulk, one = DDSketch(), DDSketch()
    bulk.add_many(values[:10])  # a small batch: never numpy
    bulk.add_many(values[10:])
    for v in values:  # array items are the (float32-rounded) values themselves
        one.add(v)
    assert bulk._pos == one._pos
    assert (bulk.count, bulk.min, bulk.max) == (one.count, one.min, one.max)
    assert bulk.sum == pytest.approx(one.sum, rel=1e-12)


def test_zeros_in_a_big_float32_array_take_the_general_path(counting: str) -> None:
    from array import array

    values = array("f", [0.001] * 3000 + [0.0] + [0.002] * 3000)
    s = DDSketch()
    s.add_many(values)
    assert s.zero_count == 1 and s.count == 6001 and s.min == 0.0


def test_without_numpy_the_stdlib_path_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys
    from array import array

    import nexus_green.monitoring.sketch as sk

    monkeypatch.setattr(sk, "_np_module", None)
    monkeypatch.setitem(sys.modules, "numpy", None)  # import numpy -> ImportError
    assert sk._numpy(True) is None and sk._np_module is False
    s = DDSketch()
    s.add_many(array("f", [0.004] * (sk.NUMPY_MIN_BATCH + 1)), numpy=True)
    assert s.count == sk.NUMPY_MIN_BATCH + 1 and abs(s.quantile(0.5) - 0.004) <= 0.004 * 0.01  # type: ignore[operator]


def test_numpy_is_imported_only_when_asked_or_already_there(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    import nexus_green.monitoring.sketch as sk

    monkeypatch.setattr(sk, "_np_module", None)
    monkeypatch.delitem(sys.modules, "numpy", raising=False)  # as if the application never imported it
    assert sk._numpy(False) is None and sk._numpy(None) is None  # left alone, not imported
    assert "numpy" not in sys.modules and sk._np_module is None
    monkeypatch.undo()  # numpy back in sys.modules (a second real import would reload it)
    monkeypatch.setattr(sk, "_np_module", None)
    np = sk._numpy(True)
    assert np is sys.modules["numpy"] and sk._numpy(None) is np and sk._numpy(False) is None
