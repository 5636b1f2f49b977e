"""``nexus-green trace view``: the HTML waterfall and the Chrome trace-event JSON of a real trace."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from nexus_green.cli import main
from nexus_green.tracing.viewer import load_otlp

pytestmark = pytest.mark.usefixtures("leakcheck")


def test_the_workload_trace_is_one_tree(trace_file: Path) -> None:
    spans = load_otlp(str(trace_file))
    assert len({s["trace_id"] for s in spans}) == 1
    names = [s["name"] for s in spans]
    assert names.count("nexus.request") == 3 and names.count("nexus.server") == 4  # one retried
    assert names.count("nexus.connect") == 1 and "connect.tcp" in names
    retried = [s for s in spans if s["name"] == "nexus.request" and s["events"]]
    assert [e["name"] for e in retried[0]["events"]] == ["retry.attempt"]


def test_view_writes_a_self_contained_waterfall(
    trace_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "trace.html"
    assert main(["trace", "view", str(trace_file), "-o", str(out)]) == 0
    spans = load_otlp(str(trace_file))
    assert capsys.readouterr().out.strip() == f"{out}: {len(spans)} spans in 1 trace"
    page = out.read_text()
    assert page.startswith("<!DOCTYPE html>")
    assert not re.search(r"<script|<link|src=|@import|url\(", page)  # nothing to fetch
    assert page.count("class='row'") == len(spans)
    assert page.count("class='ev'") == sum(len(s["events"]) for s in spans)
    assert "nexus.request" in page and "nexus.server" in page and "retry.attempt" in page
    # Indentation follows depth: the server span sits deeper than its client span.
    depth = {m.group(2): int(m.group(1)) for m in re.finditer(r"padding-left:(\d+)px'>([^<]+)<", page)}
    assert depth["checkout"] == 0 and depth["nexus.request"] == 14 and depth["nexus.server"] == 28


def test_view_default_output_name(trace_file: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy.jsonl"
    copy.write_text(trace_file.read_text())
    assert main(["trace", "view", str(copy)]) == 0
    assert (tmp_path / "copy.jsonl.html").exists()
    assert main(["trace", "view", str(copy), "--chrome"]) == 0
    assert (tmp_path / "copy.jsonl.trace.json").exists()


def test_chrome_trace_events(trace_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "trace.json"
    assert main(["trace", "view", str(trace_file), "--chrome", "-o", str(out)]) == 0
    doc = json.loads(out.read_text())
    spans = load_otlp(str(trace_file))
    complete = [e for e in doc["traceEvents"] if e["ph"] == "X"]
    assert len(complete) == len(spans)
    assert [e for e in doc["traceEvents"] if e["ph"] == "M"][0]["args"]["name"].startswith("trace ")
    by_id = {s["span_id"]: s for s in spans}
    t0 = min(s["start_ns"] for s in spans)
    assert min(e["ts"] for e in complete) == 0
    for e in complete:
        s = by_id[e["args"]["span_id"]]
        assert e["ts"] == (s["start_ns"] - t0) / 1000 and e["dur"] == s["duration_ns"] / 1000 and e["pid"] == 1
    instants = [e for e in doc["traceEvents"] if e["ph"] == "i"]
    assert [e["name"] for e in instants] == ["retry.attempt"]


def test_one_pretty_printed_document_is_read_too(trace_file: Path, tmp_path: Path) -> None:
    first = json.loads(trace_file.read_text().splitlines()[0])
    pretty = tmp_path / "pretty.json"
    pretty.write_text(json.dumps(first, indent=2))
    assert [s["span_id"] for s in load_otlp(str(pretty))] == [
        s["spanId"] for s in first["resourceSpans"][0]["scopeSpans"][0]["spans"]
    ]


@pytest.mark.parametrize(
    "content, message",
    [
        ("not json at all", "not OTLP/JSON"),
        ('{"spans": []}', "document 1 has no resourceSpans"),
        ('{"resourceSpans": [{"scopeSpans": [{"spans": [{"name": "x"}]}]}]}', "document 1: malformed span"),
    ],
)
def test_bad_files_are_refused_by_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, message: str
) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(content)
    assert main(["trace", "view", str(bad)]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "bad.jsonl.html").exists()


def test_missing_file_and_unwritable_output(
    trace_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["trace", "view", str(tmp_path / "nope.jsonl")]) == 2
    assert "No such file" in capsys.readouterr().err
    assert main(["trace", "view", str(trace_file), "-o", str(tmp_path / "no-dir" / "x.html")]) == 2
    assert "cannot write" in capsys.readouterr().err


def test_attribute_values_of_every_type_reach_the_page(tmp_path: Path) -> None:
    doc = {
        "resourceSpans": [
            {
                "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "svc"}}]},
                "scopeSpans": [
                    {
                        "spans": [
                            {
                                "traceId": "ab" * 16,
                                "spanId": "cd" * 8,
                                "parentSpanId": "ef" * 8,  # parent not in the file: drawn as a root
                                "name": "odd",
                                "kind": 9,
                                "startTimeUnixNano": "100",
                                "endTimeUnixNano": "300",
                                "attributes": [
                                    {"key": "d", "value": {"doubleValue": 0.5}},
                                    {"key": "b", "value": {"boolValue": True}},
                                    {"key": "a", "value": {"arrayValue": {"values": [{"intValue": "3"}]}}},
                                    {"key": "n", "value": {}},
                                ],
                                "status": {"code": 2, "message": "broke"},
                            }
                        ]
                    }
                ],
            }
        ]
    }
    path = tmp_path / "odd.jsonl"
    path.write_text(json.dumps(doc))
    (span,) = load_otlp(str(path))
    assert span["attributes"] == {"d": 0.5, "b": True, "a": [3], "n": None}
    assert span["kind"] == "unspecified" and span["error"] and span["service"] == "svc"
    assert main(["trace", "view", str(path)]) == 0
    page = (tmp_path / "odd.jsonl.html").read_text()
    assert "bar err" in page and "status: broke" in page
