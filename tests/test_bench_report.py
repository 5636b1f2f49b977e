"""bench/report.py on a canned small suite JSON (no benchmarking): only the marker sections change, PNGs are written.

The report regenerates docs/benchmarks.md between ``<!-- report:NAME:begin/end -->``
markers; everything else on the page is hand-written analysis that must survive.
These tests render into a copy of the real page and into tmp_path, never into docs/.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
DOCS = ROOT / "docs" / "benchmarks.md"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def report(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.syspath_prepend(str(BENCH))
    import report

    yield report


def matrix_part() -> dict[str, Any]:
    contenders = ["nexus", "gevent", "threads"]
    cells = []
    for size in (64, 1 << 20):
        for conc in (1, 50):
            rps = {"nexus": 1000.0 * conc + size % 7, "gevent": 900.0 * conc, "threads": 800.0 * conc}
            runs = {
                n: [{"rps": v, "p50_ms": 0.25, "p99_ms": 1.5, "errors": 0, "peer_cpu_share": 0.2}]
                for n, v in rps.items()
            }
            cells.append(
                {
                    "size": size,
                    "conc": conc,
                    "median_rps": rps,
                    "best_other": "gevent",
                    "ratio_gevent": rps["nexus"] / rps["gevent"],
                    "ratio_best": rps["nexus"] / rps["gevent"],
                    "peer_cpu_share_max": 0.2,
                    "errors": {n: 0 for n in contenders},
                    "runs": runs,
                }
            )
    meta = {
        "command": "python bench/bench_matrix.py --canned",
        "date": "2026-12-07 16:00 UTC",
        "peer": "C epoll echo peer",
        "rounds": 1,
        "seconds": 0.3,
        "contenders": contenders,
    }
    return {"meta": meta, "cells": cells}


def canned_suite() -> dict[str, Any]:
    conn = {"median_ms": 0.5, "p95_ms": 0.9, "max_ms": 1.1, "cold_ms": 3.0, "connects": 10}
    paced = {
        "rate": 12000.0,
        "achieved_qps": 11950.0,
        "wall_s": 1.0,
        "p50_ms": 0.61,
        "p95_ms": 1.234,
        "p99_ms": 2.5,
        "max_ms": 4.0,
        "cpu_share": 0.16,
        "pacing_cpu_share": 0.07,
        "cpu_share_with_pacing": 0.23,
        "errors": 0,
        "cdf": [[q / 100, 0.05 * (1.05**q)] for q in range(1, 100)] + [[1.0, 4.0]],
    }
    return {
        "meta": {
            "mode": "quick",
            "command": "python bench/run_all.py --quick",
            "date": "2026-12-07 16:00 UTC",
            "stamp": "2026-12-07T16-00-00Z",
            "cpus": 2,
            "load_average_start": [1.5, 1.0, 0.5],
            "python": "3.11.7",
            "estimate_s": 47,
            "wall_s": 40.0,
            "part_wall_s": {"connection": 2.0, "matrix": 13.0},
            "failed": [],
        },
        "parts": {
            "connection": {
                "peer": "C epoll echo peer",
                "tcp": conn,
                "tls": dict(conn, median_ms=2.75),
                "socks5": dict(conn, median_ms=1.5),
                "socks5+tls": dict(conn, median_ms=3.5),
                "pool_warmup": [{"size": 4, "first_ms": 0.6, "full_ms": 2.0, "per_conn_ms": 0.5}],
            },
            "matrix": matrix_part(),
            "seed": {
                "values": {
                    "connect_tcp_ms": 0.27,
                    "connect_tls_ms": 2.12,
                    "qps": 98115.0,
                    "rss_mb": 3.1,
                    "cpu_share": 0.16,
                    "p95_ms": 1.234,
                },
                "details": {"paced": paced, "load": {"rss_mb": 3.1, "rss_base_mb": 35.6, "rss_peak_mb": 38.7}},
                "peer": "C epoll echo peer",
                "seconds": 1.0,
            },
            "greenlets": {
                "greenlets": 10000,
                "requests_per_greenlet": 1,
                "requests": 10000,
                "errors": 0,
                "wall_s": 0.94,
                "rps": 10653.0,
                "all_first_answers_s": 0.94,
                "p50_ms": 656.5,
                "p99_ms": 758.2,
                "max_ms": 760.3,
                "rss_growth_mb": 81.9,
                "rss_kb_per_greenlet": 8.38,
                "pool_size": 4,
            },
            "pool": {
                "seconds": 0.3,
                "rounds": 1,
                "variants": {"default": {}, "max_size=1": {"max_size": 1}},
                "cells": [
                    {
                        "size": 65536,
                        "conc": 50,
                        "variants": {
                            "default": {"median_rps": 22970.0, "p99_ms": 4.0, "connections": 4, "errors": 0},
                            "max_size=1": {"median_rps": 20710.0, "p99_ms": 5.0, "connections": 1, "errors": 2},
                        },
                    }
                ],
            },
            "compression": {
                "codecs": [
                    {
                        "payload": "30KB",
                        "algorithm": "zstd",
                        "level": "balanced",
                        "ratio": 0.214,
                        "compress_mb_s": 402.7,
                        "decompress_mb_s": 1686.3,
                    },
                    {
                        "payload": "30KB",
                        "algorithm": "zstd",
                        "level": "best",
                        "ratio": 0.2,
                        "compress_mb_s": 3.0,
                        "decompress_mb_s": 1600.0,
                    },
                ],
                "cost_30KB": {
                    "links": {
                        "100Mbit": {
                            "choice": "zstd",
                            "wire_bytes": 6424.4,
                            "cpu_compress_us": 76.7,
                            "cpu_receiver_decompress_us": 21.3,
                            "throughput_change": 2.918,
                        }
                    }
                },
            },
            "memory": {
                "connections": 100,
                "target_kb": 15.0,
                "summary": {
                    "clients": {"traced_kb_per_conn": 11.3, "rss_kb_per_conn": 6.1, "greenlets_per_conn": 0.0},
                    "pool": {"traced_kb_per_conn": 7.7, "rss_kb_per_conn": 4.0, "greenlets_per_conn": 0.0},
                },
            },
            "pipeline": {
                "seconds": 0.5,
                "rounds": 1,
                "runs": {v: [{"rps": 1e5, "client_cpu_us": 6.5}] for v in ("none", "empty", "noop", "typical")},
                "summary": {
                    v: {"cost_median": c, "added_us_per_call": a}
                    for v, c, a in (
                        ("none", 0.0, 0.0),
                        ("empty", 0.01, 0.0),
                        ("noop", 0.1, 0.67),
                        ("typical", 0.3, 2.15),
                    )
                },
            },
            "resilience": {
                "median": {
                    "after": {
                        "client": {"idempotent=False wall": {"bare": 13.0, "resilient": 20.0, "middleware": 21.5}},
                        "functions": {
                            "noop": {"bare": 0.03, "timeout": 1.47, "bulkhead": 0.69},
                            "yield": {"bare": 1.29, "timeout": 3.03, "bulkhead": 2.24},
                        },
                    }
                }
            },
            "cache": {
                "request_path": {
                    "table": {"now c=50": {"us_per_call": {"raw": 8.4, "hit": 1.95, "miss-l1": 18.0, "miss-l2": 23.3}}}
                },
                "hit_rate": {"l1": 0.53, "l2": 0.359, "combined": 0.889},
                "latency_us": {"l1": {"p50": 1.68}, "l2": {"p50": 109.8}, "miss": {"p50": 9.77}},
            },
        },
    }


def outside_markers(text: str) -> str:
    """The page with every report section's body removed (the markers themselves kept)."""
    return re.sub(r"(<!-- report:(\w+):begin -->).*?(<!-- report:\2:end -->)", r"\1\3", text, flags=re.S)


def section(text: str, name: str) -> str:
    m = re.search(rf"<!-- report:{name}:begin -->(.*?)<!-- report:{name}:end -->", text, re.S)
    assert m, f"no {name} section"
    return m.group(1)


def test_only_the_marker_sections_change_and_the_charts_are_written(report: Any, tmp_path: Path) -> None:
    real_before = DOCS.read_bytes()
    doc = tmp_path / "benchmarks.md"
    shutil.copy(DOCS, doc)
    original = doc.read_text()
    charts = tmp_path / "bench"
    written = report.render(canned_suite(), doc, charts, json_copy=charts / "report.json")

    text = doc.read_text()
    assert outside_markers(text) == outside_markers(original)  # the written analysis survives, byte for byte
    assert text != original
    for name in report.SECTIONS:
        assert section(text, name).strip(), f"section {name} is empty"
    assert "| SOCKS5 | 1.50 ms |" in section(text, "connection")
    assert "![req/s against concurrency, 1 MiB bodies](bench/throughput_1MiB.png)" in section(text, "matrix")
    assert "| 64 B | 1.11 | 1.11 |" in section(text, "matrix")  # nexus / gevent, from the canned medians
    assert "![latency CDF at a fixed offered load](bench/latency_cdf.png)" in section(text, "latency")
    assert "| 8,200 QPS | > 12,000 QPS | 98,115 QPS | met |" in section(text, "seed")
    assert "| 120 ms | < 80 ms | 2.12 ms | met |" in section(text, "seed")
    assert "| 10,000 | 0.94 s |" in section(text, "greenlets")
    assert "| idempotent=False | middleware | 21.50 | +8.50 |" in section(text, "layers")
    assert "hit rate 88.9% (L1 53.0%, L2 35.9%)" in section(text, "layers")
    assert "| `timeout` | +1.44 | +1.74 |" in section(text, "layers")
    assert "| 30KB | zstd | 0.214 | 403 | 1,686 |" in section(text, "layers")
    assert "| 30KB | zstd | 0.200 |" not in section(text, "layers")  # balanced level only
    assert "| 100Mbit | zstd | 6,424 | 98.0 | +292% |" in section(text, "layers")
    assert "| 64 KiB | 50 | 22,970 (p99 4.0 ms, 4 conn) | 20,710 (p99 5.0 ms, 1 conn, 2 errors) |" in section(
        text, "pool"
    )
    assert "python bench/run_all.py --quick" in section(text, "summary")

    pngs = sorted(p.name for p in charts.glob("*.png"))
    assert pngs == ["latency_cdf.png", "throughput_1MiB.png", "throughput_64B.png"]
    for p in charts.glob("*.png"):
        data = p.read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 5000, p
    assert json.loads((charts / "report.json").read_text())["meta"]["stamp"] == "2026-12-07T16-00-00Z"
    assert set(written) == {*charts.glob("*.png"), charts / "report.json", doc}
    assert DOCS.read_bytes() == real_before  # the real page was not touched


def test_rendering_twice_gives_the_same_page(report: Any, tmp_path: Path) -> None:
    doc = tmp_path / "benchmarks.md"
    shutil.copy(DOCS, doc)
    report.render(canned_suite(), doc, tmp_path / "bench")
    once = doc.read_text()
    report.render(canned_suite(), doc, tmp_path / "bench")
    assert doc.read_text() == once


def test_a_failed_part_leaves_its_section_saying_so(report: Any, tmp_path: Path) -> None:
    suite = canned_suite()
    del suite["parts"]["matrix"], suite["parts"]["greenlets"], suite["parts"]["pool"]
    suite["meta"]["failed"] = ["matrix", "greenlets"]
    doc = tmp_path / "benchmarks.md"
    shutil.copy(DOCS, doc)
    report.render(suite, doc, tmp_path / "bench")
    text = doc.read_text()
    assert "not in this run" in section(text, "matrix")
    assert "not in this run" in section(text, "greenlets")
    assert "not in this run" in section(text, "pool")
    assert "**Failed parts:** matrix, greenlets." in section(text, "summary")
    assert not list((tmp_path / "bench").glob("throughput_*.png"))
    assert (tmp_path / "bench" / "latency_cdf.png").exists()


def test_missing_markers_are_a_named_error_and_the_page_is_left_alone(report: Any, tmp_path: Path) -> None:
    doc = tmp_path / "page.md"
    doc.write_text("# page\n\n<!-- report:summary:begin -->\nold\n<!-- report:summary:end -->\n")
    with pytest.raises(ValueError, match=r"markers missing: <!-- report:connection:begin -->"):
        report.render(canned_suite(), doc, tmp_path / "bench")
    assert doc.read_text() == "# page\n\n<!-- report:summary:begin -->\nold\n<!-- report:summary:end -->\n"
    assert not (tmp_path / "bench").exists()  # checked before any chart is drawn


def test_replace_sections_keeps_everything_around_the_markers(report: Any) -> None:
    text = "a\n<!-- report:x:begin -->\nold\n<!-- report:x:end -->\nb <!-- report:y:begin -->o<!-- report:y:end --> c\n"
    out = report.replace_sections(text, {"x": "new\n", "y": "N"})
    assert (
        out
        == "a\n<!-- report:x:begin -->\nnew\n<!-- report:x:end -->\nb <!-- report:y:begin -->\nN\n<!-- report:y:end --> c\n"
    )
    with pytest.raises(ValueError, match="comes before"):
        report.replace_sections("<!-- report:z:end --> <!-- report:z:begin -->", {"z": "q"})


def test_the_command_line_renders_a_saved_run(report: Any, tmp_path: Path) -> None:
    saved = tmp_path / "run.json"
    saved.write_text(json.dumps(canned_suite()))
    doc = tmp_path / "benchmarks.md"
    shutil.copy(DOCS, doc)
    assert report.main([str(saved), "--docs", str(doc), "--charts", str(tmp_path / "charts")]) == 0
    assert (tmp_path / "charts" / "throughput_64B.png").exists()
    assert "](charts/throughput_64B.png)" in doc.read_text()
