"""One snapshot rendered four ways (JSON, Prometheus, CSV, StatsD) always carries the same numbers."""

from __future__ import annotations

import csv
import io
import json
import math
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from nexus_green.errors import ConnectionRefused
from nexus_green.events import EventBus
from nexus_green.monitoring.export import (
    counter_state,
    prometheus_name,
    statsd_name,
    statsd_stats,
    to_csv,
    to_json,
    to_prometheus,
)
from nexus_green.monitoring.monitor import PerformanceMonitor
from nexus_green.monitoring.registry import series_fields

Key = tuple[str, tuple[tuple[str, str], ...], str]


def busy_snapshot(monitor: PerformanceMonitor, stream, bus: EventBus, clock) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    stream.open("c1")
    stream.refused("c2")
    monitor.tick()
    clock.advance(1.0)
    for q in range(500):
        stream.ok("c1", q, 0.0005 + (q % 50) * 0.0003)
    stream.timeout("c1", 1)
    bus.emit("pool.state", pool='we"ird\\pool', size=2, max_size=4, in_use=1, idle=1, waiters=0, utilisation=0.1)
    bus.emit("request.failed", conn_id="c1", qid=2, fid=1, latency=0.1, error=ConnectionRefused("x"))
    monitor.registry.gauge("custom.negative").set(-3)
    monitor.tick()
    return monitor.snapshot()


def canonical(snapshot: dict[str, Any]) -> dict[Key, float]:
    out: dict[Key, float] = {}
    for m in snapshot["metrics"]:
        tags = tuple(sorted(m["tags"].items()))
        for f in series_fields(m["type"], snapshot["quantile_values"]):
            v = m[f]
            if v is not None:
                out[(m["name"], tags, f)] = float(v)
    return out


def test_json_round_trips(monitor: PerformanceMonitor, stream, bus: EventBus, clock) -> None:  # type: ignore[no-untyped-def]
    snap = busy_snapshot(monitor, stream, bus, clock)
    back = json.loads(to_json(snap, indent=2))
    assert canonical(back) == canonical(snap)
    assert back["schema"] == snap["schema"] and back["time"] == snap["time"]
    assert json.loads(to_json({"x": [float("inf")], "y": (1, float("nan"))})) == {"x": [None], "y": [1, None]}


def test_prometheus_parses_and_agrees(monitor: PerformanceMonitor, stream, bus: EventBus, clock) -> None:  # type: ignore[no-untyped-def]
    snap = busy_snapshot(monitor, stream, bus, clock)
    text = to_prometheus(snap)
    families = {f.name: f for f in text_string_to_metric_families(text)}
    by_family = {prometheus_name(m["name"], m["unit"], m["type"]): m["name"] for m in snap["metrics"]}
    labels_of = {q: label for q, label in zip(snap["quantile_values"], snap["quantiles"], strict=True)}
    parsed: dict[Key, float] = {}
    for fam_name, fam in families.items():
        name = by_family[fam_name]
        for s in fam.samples:
            labels = dict(s.labels)
            if s.name.endswith("_total"):
                field = "value"
            elif s.name.endswith("_sum"):
                field = "sum"
            elif s.name.endswith("_count"):
                field = "count"
            elif "quantile" in labels:
                field = labels_of[float(labels.pop("quantile"))]
            else:
                field = "value"
            if not math.isnan(s.value):
                parsed[(name, tuple(sorted(labels.items())), field)] = s.value
    expected = {k: v for k, v in canonical(snap).items() if k[2] not in ("min", "max", "mean")}
    assert parsed == expected
    assert families["nexus_green_request_latency_seconds"].type == "summary"
    assert families["nexus_green_requests_completed"].type == "counter"
    assert families["nexus_green_pool_in_use"].samples[0].labels == {"pool": 'we"ird\\pool'}
    assert to_prometheus({"metrics": []}) == ""


def test_csv_agrees_and_has_one_row_per_series_per_point(
    monitor: PerformanceMonitor, stream, bus: EventBus, clock
) -> None:  # type: ignore[no-untyped-def]
    snap = busy_snapshot(monitor, stream, bus, clock)
    rows = list(csv.DictReader(io.StringIO(to_csv(snap))))
    assert len(rows) == len(snap["metrics"])
    parsed: dict[Key, float] = {}
    for r in rows:
        tags = tuple(sorted(tuple(kv.split("=", 1)) for kv in r["tags"].split(";"))) if r["tags"] else ()
        for f in series_fields(r["type"], snap["quantile_values"]):
            if r[f] != "":
                parsed[(r["name"], tags, f)] = float(r[f])  # type: ignore[arg-type]
        assert float(r["time"]) == snap["time"]
    assert parsed == canonical(snap)
    history = monitor.history_points()
    rows = list(csv.DictReader(io.StringIO(to_csv(history))))
    assert len(rows) == sum(len(p["metrics"]) for p in history) and len({r["time"] for r in rows}) == len(history)
    assert to_csv([]) == "time,name,type,unit,tags,value,count,sum,min,max,mean\n"


def test_statsd_stats_agree(monitor: PerformanceMonitor, stream, bus: EventBus, clock) -> None:  # type: ignore[no-untyped-def]
    snap = busy_snapshot(monitor, stream, bus, clock)
    stats = statsd_stats(snap)
    by_stat = {statsd_name(m["name"], m["tags"]): m for m in snap["metrics"]}
    parsed: dict[Key, float] = {}
    for stat, value, kind in stats:
        if stat in by_stat:
            m, field = by_stat[stat], "value"
        else:
            base, field = stat.rsplit(".", 1)
            m = by_stat[base]
        assert kind == ("c" if field in ("value", "count") and m["type"] != "gauge" else "g")
        parsed[(m["name"], tuple(sorted(m["tags"].items())), field)] = float(value)
    # zero counters are not sent; everything else is
    expected = {
        k: v for k, v in canonical(snap).items() if not (v == 0 and k[2] in ("value", "count") and _is_count(snap, k))
    }
    assert parsed == expected
    # a second flush sends only the increase
    again = statsd_stats(snap, counter_state(snap))
    assert all(kind == "g" for _, _, kind in again)
    monitor.registry.counter("requests.completed").inc(7)
    delta = dict((s, v) for s, v, _ in statsd_stats(monitor.snapshot(), counter_state(snap)))
    assert delta["requests.completed"] == 7


def _is_count(snap: dict[str, Any], key: Key) -> bool:
    for m in snap["metrics"]:
        if m["name"] == key[0] and tuple(sorted(m["tags"].items())) == key[1]:
            return m["type"] in ("counter", "histogram")
    return False


def test_name_mappings() -> None:
    assert prometheus_name("process.rss", "bytes", "gauge") == "nexus_green_process_rss_bytes"
    assert prometheus_name("errors.rate", "ratio", "gauge", namespace="") == "errors_rate_ratio"
    assert prometheus_name("seconds", "seconds", "gauge") == "nexus_green_seconds"
    assert statsd_name("a.b", {}) == "a.b"
    assert statsd_name("pool.in_use", {"pool": "tcp://h:1"}) == "pool.in_use.pool_tcp___h_1"


@pytest.mark.parametrize("value, text", [(float("inf"), "+Inf"), (float("-inf"), "-Inf"), (float("nan"), "NaN")])
def test_prometheus_special_values(value: float, text: str) -> None:
    snap = {"metrics": [{"name": "g", "type": "gauge", "unit": "", "tags": {}, "value": value}]}
    assert to_prometheus(snap).splitlines()[-1] == f"nexus_green_g {text}"
    assert statsd_stats(snap) == []
