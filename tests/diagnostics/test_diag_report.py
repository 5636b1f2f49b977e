"""DiagnosticsReport: rules, verdicts, the figures, and the JSON (schema-valid), Markdown and text forms."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from nexus_green.diagnostics import CheckResult, DiagnosticsReport, Finding, Thresholds
from nexus_green.diagnostics.report import cert_expiring, jitter, latency_p95, packet_loss, summarize

SCHEMA = json.loads((Path(__file__).resolve().parents[2] / "docs" / "diagnostics.schema.json").read_text())


def validate(report: DiagnosticsReport) -> dict:
    doc = json.loads(report.to_json())
    jsonschema.Draft202012Validator(SCHEMA, format_checker=jsonschema.FormatChecker()).validate(doc)
    return doc


def latency(**data) -> CheckResult:
    base = {"sent": 20, "received": 20, "loss_pct": 0.0, "avg_ms": 1.0, "p95_ms": 2.0, "jitter_ms": 0.1}
    return CheckResult(name="latency", status="ok", data={**base, **data})


def finding(code: str, severity: str, rec: str = "do something") -> Finding:
    return Finding(check=code.split(".")[0], code=code, severity=severity, message=f"{code} seen", recommendation=rec)


def test_healthy_report_without_issues_is_schema_valid() -> None:
    r = DiagnosticsReport(endpoint="tcp://127.0.0.1:7600", checks=[latency()])
    doc = validate(r)
    assert doc["connectionHealth"] == {"status": "healthy", "issues": [], "recommendations": [], "notes": []}
    assert doc["networkQuality"] == {"bandwidthMbps": None, "latencyMs": 1.0, "packetLossPct": 0.0, "jitterMs": 0.1}
    assert doc["performance"]["messagesPerSecond"] is None and doc["performance"]["memoryBytes"] > 0
    assert doc["connectionId"].startswith("diag-") and doc["timestamp"].endswith("Z")
    assert r.exit_code == 0


def test_warning_makes_degraded_critical_makes_unhealthy_info_counts_for_nothing() -> None:
    info = CheckResult(name="buffers", status="ok", findings=(finding("buffers.small_writes", "info"),))
    assert DiagnosticsReport(endpoint="tcp://h:1", checks=[info]).health == "healthy"
    warn = CheckResult(name="tcp", status="warning", findings=(finding("tcp.slow_connect", "warning", "pool"),))
    r = DiagnosticsReport(endpoint="tcp://h:1", checks=[info, warn])
    assert r.health == "degraded" and r.exit_code == 0 and [n.code for n in r.notes] == ["buffers.small_writes"]
    crit = CheckResult(name="tls", status="failed", findings=(finding("tls.expired", "critical", "renew"),))
    r = DiagnosticsReport(endpoint="tls://h:1", checks=[warn, crit])
    assert r.health == "unhealthy" and r.exit_code == 2
    assert [i.code for i in r.issues] == ["tls.expired", "tcp.slow_connect"]  # the worst first
    assert r.recommendations == ["renew", "pool"]
    validate(r)


def test_recommendations_are_listed_once() -> None:
    a = CheckResult(name="a", status="failed", findings=(finding("a.x", "critical", "same"),))
    b = CheckResult(name="b", status="failed", findings=(finding("b.y", "critical", "same"),))
    assert DiagnosticsReport(endpoint="tcp://h:1", checks=[a, b]).recommendations == ["same"]


def test_rule_p95_latency_threshold() -> None:
    assert list(latency_p95({"latency": latency(p95_ms=199.0)}, Thresholds())) == []
    (f,) = latency_p95({"latency": latency(p95_ms=201.0)}, Thresholds())
    assert f.code == "rules.latency_p95" and "201.0 ms" in f.message
    load = CheckResult(name="throughput", status="ok", data={"p95_ms": 30.0})
    assert [x.code for x in latency_p95({"throughput": load}, Thresholds(p95_ms=10))] == ["rules.load_p95"]


def test_rule_loss_above_one_percent() -> None:
    assert list(packet_loss({"latency": latency(loss_pct=1.0)}, Thresholds())) == []
    (f,) = packet_loss({"latency": latency(loss_pct=5.0)}, Thresholds())
    assert f.severity == "warning"
    (f,) = packet_loss({"latency": latency(loss_pct=50.0)}, Thresholds())
    assert f.severity == "critical"
    assert list(packet_loss({"latency": latency(loss_pct=100.0, received=0)}, Thresholds())) == []
    assert list(packet_loss({}, Thresholds())) == []


def test_rule_jitter() -> None:
    assert [f.code for f in jitter({"latency": latency(jitter_ms=51.0)}, Thresholds())] == ["rules.jitter"]
    assert list(jitter({"latency": latency(jitter_ms=5.0)}, Thresholds())) == []


def test_rule_certificate_expiring_in_under_14_days() -> None:
    def tls(days, *findings) -> dict:
        return {"tls": CheckResult(name="tls", status="ok", data={"days_to_expiry": days}, findings=findings)}

    assert [f.code for f in cert_expiring(tls(13.5), Thresholds())] == ["rules.cert_expiring"]
    assert list(cert_expiring(tls(14.0), Thresholds())) == []
    assert list(cert_expiring(tls(-2.0), Thresholds())) == []  # expired: the TLS check's own finding
    assert list(cert_expiring(tls(3.0, finding("tls.expires_soon", "warning")), Thresholds())) == []  # said once
    assert list(cert_expiring(tls(None), Thresholds())) == []
    assert list(cert_expiring({}, Thresholds())) == []
    r = DiagnosticsReport(endpoint="tls://h:1", checks=[tls(5)["tls"]])
    assert r.health == "degraded" and r.issues[0].code == "rules.cert_expiring"


def test_figures_come_from_the_checks_and_skipped_checks_give_none() -> None:
    checks = [
        latency(avg_ms=2.5, loss_pct=5.0, jitter_ms=0.7),
        CheckResult(name="bandwidth", status="ok", data={"bandwidth_mbps": 812.5}),
        CheckResult(name="throughput", status="ok", data={"messages_per_s": 12000.0, "avg_ms": 0.6}),
        CheckResult(name="cpu", status="ok", data={"cpu_pct": 87.5}),
        CheckResult(name="memory", status="ok", data={"rss_bytes": 50_000_000}),
    ]
    r = DiagnosticsReport(endpoint="tcp://h:1", checks=checks)
    assert r.network_quality == {"bandwidthMbps": 812.5, "latencyMs": 2.5, "packetLossPct": 5.0, "jitterMs": 0.7}
    assert r.performance == {
        "messagesPerSecond": 12000.0,
        "averageLatencyMs": 0.6,
        "memoryBytes": 50_000_000,
        "cpuPercent": 87.5,
    }
    skipped = CheckResult(name="bandwidth", status="skipped", skipped_reason="no echo function")
    assert DiagnosticsReport(endpoint="tcp://h:1", checks=[skipped]).network_quality["bandwidthMbps"] is None
    assert r.check("cpu") is checks[3] and r.check("nope") is None
    validate(r)


def test_markdown_is_readable_and_names_every_check_and_issue() -> None:
    crit = CheckResult(
        name="tcp",
        status="failed",
        duration_ms=1.5,
        data={"attempts": [{"ok": False}], "connect_ms": None},
        findings=(finding("tcp.refused", "critical", "start the server"),),
    )
    skipped = CheckResult(name="latency", status="skipped", skipped_reason="the endpoint is unreachable")
    cpu = CheckResult(
        name="cpu",
        status="ok",
        data={"cpu_pct": 5.0, "hot_spots": [{"function": "a.b", "self_ms": 2.0, "total_ms": 3.0, "self_pct": 50.0}]},
    )
    md = DiagnosticsReport(endpoint="tcp://h:1", checks=[crit, skipped, cpu]).to_markdown()
    assert md.startswith("# Diagnostics: tcp://h:1\n") and "**Verdict: UNHEALTHY**" in md
    assert "- **critical** `tcp.refused`: tcp.refused seen\n  - what to do: start the server" in md
    assert "| tcp | failed | 1.5 ms | 0/1 address(es) connect; tcp.refused seen |" in md
    assert "| latency | skipped | 0.0 ms | skipped: the endpoint is unreachable |" in md
    assert "| `a.b` | 2.0 ms | 50.0 % |" in md
    text = DiagnosticsReport(endpoint="tcp://h:1", checks=[crit, skipped]).to_text()
    assert text.startswith("tcp://h:1: UNHEALTHY") and "[critical] tcp.refused seen" in text
    assert "-> start the server" in text
    assert "no issues found" in DiagnosticsReport(endpoint="tcp://h:1").to_text()
    assert "None found." in DiagnosticsReport(endpoint="tcp://h:1").to_markdown()


@pytest.mark.parametrize(
    ("name", "data", "expected"),
    [
        (
            "dns",
            {"addresses": [1, 2], "ipv4": 1, "ipv6": 1, "time_ms": 2.0},
            "2 address(es) (1 IPv4, 1 IPv6) in 2.0 ms",
        ),
        ("protocol", {"speaks": "http", "heartbeat_rtt_ms": None}, "speaks http"),
        ("latency", {"sent": 3, "received": 0}, "0/3 heartbeats answered"),
        ("throughput", {"requests": 5, "completed": 0}, "0/5 requests completed"),
        (
            "memory",
            {"growth_bytes": 9, "rounds": 3, "leak_suspected": True},
            "9 B growth over 3 rounds (leak suspected)",
        ),
        ("reachability", {"reachable": False, "via": "direct"}, "unreachable (direct)"),
        (
            "tls",
            {"protocol": "TLSv1.3", "cipher": {"name": "X", "bits": 256}, "days_to_expiry": 30.2},
            "TLSv1.3, X, expires in 30 days",
        ),
        ("tls", {"protocol": None, "cipher": None, "days_to_expiry": -3.0}, "expired 3 days ago"),
        ("other", {}, "ok"),
    ],
)
def test_summaries(name: str, data: dict, expected: str) -> None:
    assert summarize(CheckResult(name=name, status="ok", data=data)) == expected


def test_schema_rejects_what_it_should() -> None:
    doc = json.loads(DiagnosticsReport(endpoint="tcp://h:1", checks=[latency()]).to_json())
    v = jsonschema.Draft202012Validator(SCHEMA)
    for bad in (
        {**doc, "connectionHealth": {**doc["connectionHealth"], "status": "fine"}},
        {**doc, "networkQuality": {**doc["networkQuality"], "packetLossPct": 101}},
        {**doc, "checks": [{**doc["checks"][0], "status": "skipped", "skipped_reason": ""}]},
        {k: v for k, v in doc.items() if k != "endpoint"},
    ):
        assert not v.is_valid(bad)
