"""Exporters: one monitoring snapshot rendered as JSON, Prometheus text, CSV and StatsD lines.

This module owns the four renderings and the name mappings between them.
Every function takes the plain snapshot dict of
:meth:`PerformanceMonitor.snapshot` (or a list of them, for CSV history), so
all four formats of one snapshot carry the same numbers:

* :func:`to_json` -- the snapshot itself (NaN becomes null).
* :func:`to_prometheus` -- text exposition format 0.0.4. ``request.latency``
  becomes ``nexus_green_request_latency_seconds``; counters get ``_total``;
  histograms are summaries (``quantile`` label, ``_sum``, ``_count``) -- the
  quantiles come from the sketch, so a summary is the honest type.
* :func:`to_csv` -- one row per series per snapshot (history point), with
  columns ``time,name,type,unit,tags,value,count,sum,min,max,mean,p50,...``.
* :func:`statsd_stats` -- ``(stat, value, type)`` for the StatsD sink:
  counters as deltas since the previous flush (``c``), histogram counts as
  deltas (``<name>.count``, ``c``), everything else as gauges (``g``).
  Tags become name segments: ``errors{class=X,kind=request}`` is
  ``errors.class_X.kind_request``.

Example::

    >>> from nexus_green.events import EventBus
    >>> from nexus_green.monitoring.monitor import PerformanceMonitor
    >>> with PerformanceMonitor(EventBus()) as mon:
    ...     mon.registry.counter("requests.completed").inc(3)
    ...     snap = mon.snapshot()
    >>> "nexus_green_requests_completed_total 3" in to_prometheus(snap)
    True
    >>> ("requests.completed", 3, "c") in statsd_stats(snap)
    True
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Optional, Union

from .registry import DEFAULT_QUANTILES, quantile_label, series_fields

__all__ = [
    "to_json",
    "to_prometheus",
    "to_csv",
    "statsd_stats",
    "statsd_name",
    "prometheus_name",
    "counter_state",
    "CSV_COLUMNS",
]

Snapshot = Mapping[str, Any]
_PROM_UNIT_SUFFIX = {"seconds": "seconds", "bytes": "bytes", "ratio": "ratio", "percent": "percent"}
_BAD_STATSD = re.compile(r"[^A-Za-z0-9_\-]")


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def to_json(snapshot: Snapshot, *, indent: Optional[int] = None) -> str:
    """The snapshot as JSON (non-finite numbers as null).

    Example::

        >>> to_json({"metrics": [{"name": "x", "value": float("nan")}]})
        '{"metrics": [{"name": "x", "value": null}]}'
    """
    return json.dumps(_clean(dict(snapshot)), indent=indent, sort_keys=False)


# --------------------------------------------------------------------------- Prometheus
def prometheus_name(name: str, unit: str, kind: str, namespace: str = "nexus_green") -> str:
    """The Prometheus family name of a metric (``_total`` is added to counter samples, not here).

    Example::

        >>> prometheus_name("request.latency", "seconds", "histogram")
        'nexus_green_request_latency_seconds'
        >>> prometheus_name("bytes.sent", "bytes", "counter")
        'nexus_green_bytes_sent'
    """
    base = name.replace(".", "_")
    suffix = _PROM_UNIT_SUFFIX.get(unit)
    if suffix and not base.endswith("_" + suffix) and base != suffix and not base.startswith(suffix + "_"):
        base = f"{base}_{suffix}"
    return f"{namespace}_{base}" if namespace else base


def _prom_labels(tags: Mapping[str, str], extra: Sequence[tuple[str, str]] = ()) -> str:
    items = list(sorted(tags.items())) + list(extra)
    if not items:
        return ""
    esc = [(k, str(v).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")) for k, v in items]
    return "{" + ",".join(f'{k}="{v}"' for k, v in esc) + "}"


def _prom_value(value: Any) -> str:
    if value is None:
        return "NaN"
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "+Inf" if value > 0 else "-Inf"
        return repr(value)
    return str(value)


def _quantile_pairs(snapshot: Snapshot) -> list[tuple[str, float]]:
    values = snapshot.get("quantile_values", list(DEFAULT_QUANTILES))
    return [(quantile_label(q), float(q)) for q in values]


def to_prometheus(snapshot: Snapshot, *, namespace: str = "nexus_green") -> str:
    """The snapshot in Prometheus text exposition format (one family per metric name).

    Example::

        >>> snap = {"metrics": [{"name": "pool.idle", "type": "gauge", "unit": "connections",
        ...                      "tags": {"pool": "a"}, "value": 2}]}
        >>> print(to_prometheus(snap, namespace="ng"), end="")
        # HELP ng_pool_idle pool.idle (connections)
        # TYPE ng_pool_idle gauge
        ng_pool_idle{pool="a"} 2
    """
    families: dict[str, list[Mapping[str, Any]]] = {}
    for m in snapshot.get("metrics", []):
        families.setdefault(prometheus_name(m["name"], m["unit"], m["type"], namespace), []).append(m)
    quantiles = _quantile_pairs(snapshot)
    out: list[str] = []
    for fam, entries in families.items():
        first = entries[0]
        kind = {"counter": "counter", "gauge": "gauge", "histogram": "summary"}[first["type"]]
        unit = f" ({first['unit']})" if first["unit"] else ""
        # Text format 0.0.4: a counter's HELP/TYPE lines name the _total sample.
        head = f"{fam}_total" if kind == "counter" else fam
        out.append(f"# HELP {head} {first['name']}{unit}")
        out.append(f"# TYPE {head} {kind}")
        for m in entries:
            tags = m.get("tags", {})
            if kind == "counter":
                out.append(f"{fam}_total{_prom_labels(tags)} {_prom_value(m['value'])}")
            elif kind == "gauge":
                out.append(f"{fam}{_prom_labels(tags)} {_prom_value(m['value'])}")
            else:
                for label, q in quantiles:
                    out.append(f"{fam}{_prom_labels(tags, [('quantile', repr(q))])} {_prom_value(m.get(label))}")
                out.append(f"{fam}_sum{_prom_labels(tags)} {_prom_value(m['sum'])}")
                out.append(f"{fam}_count{_prom_labels(tags)} {_prom_value(m['count'])}")
    return "\n".join(out) + "\n" if out else ""


# --------------------------------------------------------------------------- CSV
CSV_COLUMNS: tuple[str, ...] = ("time", "name", "type", "unit", "tags", "value", "count", "sum", "min", "max", "mean")


def _tag_string(tags: Mapping[str, str]) -> str:
    return ";".join(f"{k}={v}" for k, v in sorted(tags.items()))


def to_csv(snapshots: Union[Snapshot, Iterable[Snapshot]]) -> str:
    """One row per series per snapshot; pass a list of history points for the history.

    Empty cells mean "not applicable" (a counter has no p99) or "no data yet".

    Example::

        >>> snap = {"time": 1.5, "quantile_values": [0.5], "metrics": [
        ...     {"name": "x", "type": "counter", "unit": "", "tags": {}, "value": 4}]}
        >>> print(to_csv(snap), end="")
        time,name,type,unit,tags,value,count,sum,min,max,mean,p50
        1.5,x,counter,,,4,,,,,,
    """
    if isinstance(snapshots, Mapping):
        snapshots = [snapshots]
    snapshots = list(snapshots)
    labels = [label for label, _ in _quantile_pairs(snapshots[0])] if snapshots else []
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(list(CSV_COLUMNS) + labels)
    for snap in snapshots:
        for m in snap.get("metrics", []):
            row: dict[str, Any] = {
                "time": snap.get("time", ""),
                "name": m["name"],
                "type": m["type"],
                "unit": m["unit"],
                "tags": _tag_string(m.get("tags", {})),
            }
            for f in series_fields(m["type"], ()) + tuple(labels if m["type"] == "histogram" else ()):
                v = m.get(f)
                row[f] = "" if v is None or (isinstance(v, float) and math.isnan(v)) else v
            writer.writerow([row.get(c, "") for c in list(CSV_COLUMNS) + labels])
    return buf.getvalue()


# --------------------------------------------------------------------------- StatsD
def statsd_name(name: str, tags: Mapping[str, str]) -> str:
    """The StatsD stat name of a series: tags become ``key_value`` segments.

    Example::

        >>> statsd_name("errors", {"kind": "request", "class": "Time out"})
        'errors.class_Time_out.kind_request'
    """
    parts = [name] + [f"{_BAD_STATSD.sub('_', k)}_{_BAD_STATSD.sub('_', str(v))}" for k, v in sorted(tags.items())]
    return ".".join(parts)


def counter_state(snapshot: Snapshot) -> dict[str, float]:
    """Cumulative counter values of a snapshot by StatsD stat name (what the next delta is taken from).

    Example::

        >>> counter_state({"metrics": [{"name": "x", "type": "counter", "tags": {}, "value": 2}]})
        {'x': 2}
    """
    state: dict[str, float] = {}
    for m in snapshot.get("metrics", []):
        stat = statsd_name(m["name"], m.get("tags", {}))
        if m["type"] == "counter":
            state[stat] = m["value"]
        elif m["type"] == "histogram":
            state[stat + ".count"] = m["count"]
    return state


def statsd_stats(
    snapshot: Snapshot, previous: Optional[Mapping[str, float]] = None, *, histograms: bool = True
) -> list[tuple[str, Any, str]]:
    """``(stat, value, "c" | "g")`` for every figure of the snapshot.

    ``histograms=False`` leaves histograms out: the StatsD sink sends them as
    timers, from raw samples, instead of these cumulative summaries.

    Counters (and histogram counts) are sent as the increase since
    ``previous`` (a :func:`counter_state`); a zero increase is not sent.
    Gauges and histogram fields (sum, min, max, mean, quantiles) are gauges;
    figures that are None or NaN are skipped.

    Example::

        >>> snap = {"quantile_values": [0.99], "metrics": [
        ...     {"name": "x", "type": "counter", "tags": {}, "value": 5},
        ...     {"name": "lat", "type": "histogram", "tags": {}, "count": 2, "sum": 0.3, "min": 0.1,
        ...      "max": 0.2, "mean": 0.15, "p99": 0.2}]}
        >>> statsd_stats(snap, {"x": 3})
        [('x', 2, 'c'), ('lat.count', 2, 'c'), ('lat.sum', 0.3, 'g'), ('lat.min', 0.1, 'g'), ('lat.max', 0.2, 'g'), ('lat.mean', 0.15, 'g'), ('lat.p99', 0.2, 'g')]
    """
    previous = previous or {}
    labels = [label for label, _ in _quantile_pairs(snapshot)]
    out: list[tuple[str, Any, str]] = []
    for m in snapshot.get("metrics", []):
        stat = statsd_name(m["name"], m.get("tags", {}))
        if m["type"] == "counter":
            delta = m["value"] - previous.get(stat, 0)
            if delta > 0:
                out.append((stat, delta, "c"))
        elif m["type"] == "gauge":
            v = m["value"]
            if v is not None and not (isinstance(v, float) and not math.isfinite(v)):
                out.append((stat, v, "g"))
        elif histograms:
            delta = m["count"] - previous.get(stat + ".count", 0)
            if delta > 0:
                out.append((stat + ".count", delta, "c"))
            for f in ["sum", "min", "max", "mean"] + labels:
                v = m.get(f)
                if v is not None and math.isfinite(v):
                    out.append((f"{stat}.{f}", v, "g"))
    return out
