"""Trace viewer: OTLP/JSON in, a self-contained HTML waterfall or Chrome trace-event JSON out (layer L4).

:func:`load_otlp` reads a file of OTLP/JSON ``ExportTraceServiceRequest``
documents, one per line (what :class:`~nexus_green.tracing.FileSink`
writes) or one document for the whole file, into flat span records.
:func:`render_html` draws one waterfall per trace: a row per span, indented
under its parent, its bar placed on the trace's time axis, span events as
ticks, errors in red, and every attribute in the row's tooltip. The page has
no external resource (no script, font or stylesheet to fetch).
:func:`render_chrome` writes the Chrome trace-event format (``ph: "X"``
complete events in microseconds, ``ph: "i"`` for span events) that Perfetto
and ``chrome://tracing`` open: one process per trace, one thread per depth.

Example::

    >>> import json
    >>> line = json.dumps({"resourceSpans": [{"resource": {"attributes": []}, "scopeSpans": [{"spans": [
    ...     {"traceId": "ab" * 16, "spanId": "cd" * 8, "name": "root", "kind": 3,
    ...      "startTimeUnixNano": "1000", "endTimeUnixNano": "5000", "status": {"code": 0}}]}]}]})
    >>> spans = parse_otlp_lines([line])
    >>> spans[0]["name"], spans[0]["duration_ns"]
    ('root', 4000)
    >>> "root" in render_html(spans) and render_chrome(spans)["traceEvents"][1]["dur"]
    4.0
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterable
from typing import Any

__all__ = ["load_otlp", "parse_otlp_lines", "render_html", "render_chrome", "TraceFileError"]

_KINDS = {0: "unspecified", 1: "internal", 2: "server", 3: "client", 4: "producer", 5: "consumer"}


class TraceFileError(ValueError):
    """A trace file that is not OTLP/JSON; the message names the document.

    Example::

        >>> parse_otlp_lines(['{"spans": []}'])
        Traceback (most recent call last):
        ...
        nexus_green.tracing.viewer.TraceFileError: document 1 has no resourceSpans: not an OTLP/JSON trace export
    """


def _value(v: dict[str, Any]) -> Any:
    if "stringValue" in v:
        return v["stringValue"]
    if "intValue" in v:
        return int(v["intValue"])
    if "doubleValue" in v:
        return float(v["doubleValue"])
    if "boolValue" in v:
        return bool(v["boolValue"])
    if "arrayValue" in v:
        return [_value(x) for x in v["arrayValue"].get("values", [])]
    return None


def _attrs(items: Iterable[dict[str, Any]]) -> dict[str, Any]:
    return {a["key"]: _value(a.get("value", {})) for a in items}


def _records(doc: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for rs in doc.get("resourceSpans", []):
        service = _attrs(rs.get("resource", {}).get("attributes", [])).get("service.name", "")
        for ss in rs.get("scopeSpans", []):
            for s in ss.get("spans", []):
                start, end = int(s["startTimeUnixNano"]), int(s["endTimeUnixNano"])
                out.append(
                    {
                        "trace_id": s["traceId"],
                        "span_id": s["spanId"],
                        "parent_span_id": s.get("parentSpanId", ""),
                        "name": s.get("name", ""),
                        "kind": _KINDS.get(int(s.get("kind", 0)), "unspecified"),
                        "start_ns": start,
                        "end_ns": end,
                        "duration_ns": end - start,
                        "attributes": _attrs(s.get("attributes", [])),
                        "events": [
                            {
                                "name": e.get("name", ""),
                                "time_ns": int(e["timeUnixNano"]),
                                **_attrs(e.get("attributes", [])),
                            }
                            for e in s.get("events", [])
                        ],
                        "error": int(s.get("status", {}).get("code", 0)) == 2,
                        "status_message": s.get("status", {}).get("message", ""),
                        "service": service,
                    }
                )
    return out


def parse_otlp_lines(lines: Iterable[str]) -> list[dict[str, Any]]:
    """Span records from OTLP/JSON text: one document per line, or one document over all the lines."""
    lines = list(lines)
    docs: list[dict[str, Any]] = []
    try:
        docs = [json.loads(line) for line in lines if line.strip()]
    except json.JSONDecodeError:
        try:
            docs = [json.loads("".join(lines))]
        except json.JSONDecodeError as exc:
            raise TraceFileError(f"not OTLP/JSON (one document per line or one for the file): {exc}") from None
    spans: list[dict[str, Any]] = []
    for n, doc in enumerate(docs, 1):
        if not isinstance(doc, dict) or "resourceSpans" not in doc:
            raise TraceFileError(f"document {n} has no resourceSpans: not an OTLP/JSON trace export")
        try:
            spans.extend(_records(doc))
        except (KeyError, TypeError, ValueError) as exc:
            raise TraceFileError(f"document {n}: malformed span ({type(exc).__name__}: {exc})") from None
    return spans


def load_otlp(path: str) -> list[dict[str, Any]]:
    """Span records from an OTLP/JSON file (see :func:`parse_otlp_lines`).

    Example::

        >>> import tempfile, pathlib
        >>> with tempfile.TemporaryDirectory() as d:
        ...     p = pathlib.Path(d, "empty.jsonl"); _ = p.write_text('{"resourceSpans": []}')
        ...     load_otlp(str(p))
        []
    """
    with open(path, encoding="utf-8") as f:
        return parse_otlp_lines(f)


def _trees(spans: list[dict[str, Any]]) -> list[tuple[str, list[tuple[int, dict[str, Any]]]]]:
    """Per trace (earliest first): its spans depth-first with their depth, children by start time."""
    by_trace: dict[str, list[dict[str, Any]]] = {}
    for s in spans:
        by_trace.setdefault(s["trace_id"], []).append(s)
    out = []
    for trace_id, members in sorted(by_trace.items(), key=lambda kv: min(s["start_ns"] for s in kv[1])):
        ids = {s["span_id"] for s in members}
        children: dict[str, list[dict[str, Any]]] = {}
        roots = []
        for s in sorted(members, key=lambda s: (s["start_ns"], -s["duration_ns"])):
            if s["parent_span_id"] and s["parent_span_id"] in ids:
                children.setdefault(s["parent_span_id"], []).append(s)
            else:
                roots.append(s)
        rows: list[tuple[int, dict[str, Any]]] = []
        stack = [(0, r) for r in reversed(roots)]
        while stack:
            depth, s = stack.pop()
            rows.append((depth, s))
            stack.extend((depth + 1, c) for c in reversed(children.get(s["span_id"], [])))
        out.append((trace_id, rows))
    return out


_CSS = """
body{font:13px system-ui,sans-serif;margin:16px;color:#222;background:#fff}
h1{font-size:18px}h2{font-size:14px;margin:18px 0 4px;font-family:monospace}
.row{display:flex;align-items:center;height:20px;border-bottom:1px solid #f0f0f0}
.label{width:340px;box-sizing:border-box;flex:none;overflow:hidden;white-space:nowrap;text-overflow:ellipsis;font-family:monospace}
.track{position:relative;flex:1;height:14px;background:#fafafa}
.bar{position:absolute;height:14px;border-radius:2px;background:#4a90d9;min-width:1px}
.bar.server{background:#7b5ea7}.bar.internal{background:#6aa84f}.bar.err{background:#d9534f}
.ev{position:absolute;top:-2px;width:2px;height:18px;background:#f0ad4e}
.dur{width:90px;flex:none;text-align:right;font-family:monospace;color:#555}
.legend span{display:inline-block;padding:0 6px;margin-right:6px;color:#fff;border-radius:2px}
"""


def render_html(spans: list[dict[str, Any]], title: str = "nexus_green trace") -> str:
    """A self-contained HTML page with one waterfall per trace."""
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        "<p class='legend'><span style='background:#4a90d9'>client</span><span style='background:#7b5ea7'>server"
        "</span><span style='background:#6aa84f'>internal</span><span style='background:#d9534f'>error</span>"
        "<span style='background:#f0ad4e'>event</span></p>",
        f"<p>{len(spans)} spans</p>",
    ]
    for trace_id, rows in _trees(spans):
        t0 = min(s["start_ns"] for _, s in rows)
        t1 = max(s["end_ns"] for _, s in rows)
        total = max(t1 - t0, 1)
        parts.append(f"<h2>trace {html.escape(trace_id)} &middot; {total / 1e6:.3f} ms</h2>")
        for depth, s in rows:
            left = 100.0 * (s["start_ns"] - t0) / total
            width = 100.0 * s["duration_ns"] / total
            cls = "bar err" if s["error"] else f"bar {s['kind']}"
            tip = "\n".join(
                [f"{s['name']} ({s['kind']}) {s['duration_ns'] / 1e6:.3f} ms", f"span {s['span_id']}"]
                + [f"{k} = {v}" for k, v in s["attributes"].items()]
                + ([f"status: {s['status_message']}"] if s["status_message"] else [])
            )
            ticks = "".join(
                f"<div class='ev' style='left:{100.0 * (e['time_ns'] - t0) / total:.3f}%' "
                f"title='{html.escape(json.dumps(e, default=str), quote=True)}'></div>"
                for e in s["events"]
            )
            parts.append(
                f"<div class='row' title='{html.escape(tip, quote=True)}'>"
                f"<div class='label' style='padding-left:{depth * 14}px'>{html.escape(s['name'])}</div>"
                f"<div class='track'><div class='{cls}' style='left:{left:.3f}%;width:{width:.3f}%'></div>{ticks}"
                f"</div><div class='dur'>{s['duration_ns'] / 1e6:.3f} ms</div></div>"
            )
    parts.append("</body></html>")
    return "\n".join(parts)


def render_chrome(spans: list[dict[str, Any]]) -> dict[str, Any]:
    """Chrome trace-event JSON (a dict): one pid per trace, one tid per depth, microseconds from the first span."""
    events: list[dict[str, Any]] = []
    # Microseconds from the file's first span: epoch microseconds as floats would lose the sub-microsecond part.
    t0 = min((s["start_ns"] for s in spans), default=0)
    for pid, (trace_id, rows) in enumerate(_trees(spans), 1):
        events.append({"name": "process_name", "ph": "M", "pid": pid, "tid": 0, "args": {"name": f"trace {trace_id}"}})
        for depth, s in rows:
            args = dict(s["attributes"], span_id=s["span_id"], kind=s["kind"])
            events.append(
                {
                    "name": s["name"],
                    "cat": s["kind"],
                    "ph": "X",
                    "ts": (s["start_ns"] - t0) / 1000.0,
                    "dur": s["duration_ns"] / 1000.0,
                    "pid": pid,
                    "tid": depth,
                    "args": args,
                }
            )
            for e in s["events"]:
                events.append(
                    {
                        "name": e["name"],
                        "ph": "i",
                        "s": "t",
                        "ts": (e["time_ns"] - t0) / 1000.0,
                        "pid": pid,
                        "tid": depth,
                    }
                )
    return {"traceEvents": events, "displayTimeUnit": "ms"}
