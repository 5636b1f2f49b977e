"""Metrics registry: identity, validation, the cardinality guard, snapshots."""

from __future__ import annotations

import json
import math

import pytest

from nexus_green.errors import MetricError, UsageError
from nexus_green.monitoring.registry import Counter, Gauge, Histogram, MetricsRegistry, quantile_label, series_fields


def test_same_name_and_tags_return_the_same_series() -> None:
    reg = MetricsRegistry()
    a = reg.counter("requests.completed", unit="requests", help="answered")
    b = reg.counter("requests.completed")
    assert a is b
    t1 = reg.counter("errors", {"kind": "request", "class": "X"})
    t2 = reg.counter("errors", {"class": "X", "kind": "request"})  # tag order does not matter
    assert t1 is t2 and t1.tags == (("class", "X"), ("kind", "request"))
    assert reg.counter("errors", {"class": "Y", "kind": "request"}) is not t1
    assert len(reg) == 3
    assert reg.get("errors", {"class": "X", "kind": "request"}) is t1
    assert reg.get("errors") is None


@pytest.mark.parametrize("name", ["", "Requests", "a..b", ".a", "a.", "a-b", "1abc", "a b"])
def test_bad_names_are_refused_with_a_clear_error(name: str) -> None:
    reg = MetricsRegistry()
    with pytest.raises(MetricError, match="lower-case dotted words"):
        reg.counter(name)
    assert len(reg) == 0


def test_bad_tag_keys_are_refused() -> None:
    reg = MetricsRegistry()
    with pytest.raises(MetricError, match="tag key 'Bad-Key'"):
        reg.gauge("x", {"Bad-Key": 1})
    with pytest.raises(MetricError, match="tag key 1"):
        reg.gauge("x", {1: "a"})  # type: ignore[dict-item]


def test_a_name_keeps_its_type_and_unit() -> None:
    reg = MetricsRegistry()
    reg.counter("x", {"a": "1"}, unit="requests")
    with pytest.raises(MetricError, match="'x' is a counter, not a gauge"):
        reg.gauge("x", {"a": "2"})
    with pytest.raises(MetricError, match="'x' is a counter, not a histogram"):
        reg.histogram("x", {"a": "1"})
    with pytest.raises(MetricError, match="unit 'requests', not 'bytes'"):
        reg.counter("x", {"a": "3"}, unit="bytes")
    # An omitted unit inherits the declared one.
    assert reg.counter("x", {"a": "4"}).unit == "requests"
    with pytest.raises(MetricError, match="unknown type 'timer'"):
        reg.declare("timer", "y")
    assert issubclass(MetricError, UsageError) and issubclass(MetricError, ValueError)


def test_declare_fixes_help_for_tagged_series() -> None:
    reg = MetricsRegistry()
    reg.declare("counter", "errors", unit="errors", help="errors by class")
    c = reg.counter("errors", {"class": "A"})
    assert (c.unit, c.help) == ("errors", "errors by class")
    reg.declare("gauge", "late", unit="s")
    reg.declare("gauge", "late", help="filled in later")
    assert ("late", "gauge", "s", "filled in later") in reg.describe()


def test_cardinality_guard_caps_series_and_reports_drops() -> None:
    reg = MetricsRegistry(max_series=3)
    for i in range(10):
        reg.counter("errors", {"class": f"E{i}"}).inc()
    assert len(reg) == 3
    assert reg.dropped == {"errors": 7} and reg.dropped_total == 7
    detached = reg.counter("errors", {"class": "E9"})
    detached.inc(5)  # works, but goes nowhere
    assert all(m["value"] == 1 for m in reg.snapshot())
    # Brand-new names past the cap are not remembered either.
    reg.gauge("brand.new").set(1)
    assert "brand.new" not in [n for n, *_ in reg.describe()]
    assert reg.dropped["brand.new"] == 1
    with pytest.raises(MetricError, match="lower-case"):
        reg.gauge("Bad Name")
    assert "dropped=9" in repr(reg)


def test_dropped_report_itself_is_bounded() -> None:
    reg = MetricsRegistry(max_series=1)
    reg.counter("keep")
    for i in range(150):
        reg.counter(f"n{i}")
    assert len(reg.dropped) == 101 and reg.dropped["(other)"] == 50 and reg.dropped_total == 150


def test_snapshot_is_plain_sorted_and_json_serialisable() -> None:
    reg = MetricsRegistry()
    reg.counter("b.count").inc(2)
    reg.gauge("a.gauge", {"pool": "p"}, unit="connections").set(4)
    h = reg.histogram("c.latency")
    snap = reg.snapshot()
    assert [m["name"] for m in snap] == ["a.gauge", "b.count", "c.latency"]
    assert snap[0] == {"name": "a.gauge", "type": "gauge", "unit": "connections", "tags": {"pool": "p"}, "value": 4}
    empty = snap[2]
    assert empty["count"] == 0 and empty["p99"] is None and empty["mean"] is None
    for v in (0.001, 0.002, 0.004):
        h.record(v)
    d = reg.snapshot()[2]
    assert d["count"] == 3 and d["min"] == 0.001 and d["max"] == 0.004
    assert d["mean"] == pytest.approx(0.007 / 3)
    assert abs(d["p50"] - 0.002) <= 0.00002
    json.dumps(reg.snapshot())


def test_counter_gauge_histogram_behaviour() -> None:
    c = Counter("x")
    with pytest.raises(MetricError, match="cannot decrease"):
        c.inc(-1)
    g = Gauge("y")
    g.set(2.5)
    g.inc(0.5)
    g.dec()
    assert g.read() == 2.0
    broken = Gauge("z", fn=lambda: 1 / 0)
    assert math.isnan(broken.read())
    h = Histogram("lat")
    h.record(0.5)
    assert h.count == 1
    assert repr(Counter("e", (("class", "A"),))) == "<Counter e{class=A}>"
    assert repr(g) == "<Gauge y>"


def test_gauge_function_can_be_attached_later() -> None:
    reg = MetricsRegistry()
    g = reg.gauge("q.depth")
    reg.gauge("q.depth", fn=lambda: 9)
    assert g.read() == 9


def test_labels_and_fields() -> None:
    assert quantile_label(0.9999) == "p9999"
    assert series_fields("gauge") == ("value",)
    assert series_fields("histogram", (0.5,)) == ("count", "sum", "min", "max", "mean", "p50")
    with pytest.raises(MetricError, match="max_series"):
        MetricsRegistry(max_series=0)
