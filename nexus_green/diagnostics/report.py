"""The DiagnosticsReport: every check's result, the rules that judge them, the verdict, and its JSON/Markdown/text forms.

A report holds the :class:`~nexus_green.diagnostics.results.CheckResult` of
every check that ran. From them it derives:

* ``networkQuality`` -- bandwidth (Mbps), latency (ms, the heartbeat
  burst's average), packet loss (%), jitter (ms);
* ``performance`` -- messages/s and average latency of the throughput test,
  memory (the process's resident bytes) and CPU %;
* ``connectionHealth`` -- ``healthy``, ``degraded`` or ``unhealthy``, with
  the issues and recommendations. Issues are the checks' findings plus what
  the :data:`RULES` find in the figures (thresholds in :class:`Thresholds`):
  a certificate that expires in under 14 days, p95 latency above 200 ms,
  loss above 1 %, jitter above 50 ms. A critical issue makes the verdict
  unhealthy, a warning degraded; info findings are shown but do not count.

The JSON form (:meth:`DiagnosticsReport.to_dict`) validates against
docs/diagnostics.schema.json; its keys are camelCase (``connectionHealth``,
``networkQuality``), the checks' own data keep their snake_case names.

Example::

    >>> from nexus_green.diagnostics.results import CheckResult
    >>> lat = CheckResult(name="latency", status="ok", data={"avg_ms": 3.0, "p95_ms": 450.0, "loss_pct": 0.0, "jitter_ms": 1.0})
    >>> r = DiagnosticsReport(endpoint="tcp://db:7600", checks=[lat])
    >>> r.health, [i.code for i in r.issues], r.network_quality["latencyMs"]
    ('degraded', ['rules.latency_p95'], 3.0)
"""

from __future__ import annotations

import datetime
import json
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

from .results import SEVERITIES, CheckResult, Finding

__all__ = ["DiagnosticsReport", "HEALTH", "RULES", "Thresholds"]

HEALTH = ("healthy", "degraded", "unhealthy")
SCHEMA_VERSION = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class Thresholds:
    """The limits the rules judge figures against.

    Example::

        >>> Thresholds(p95_ms=50).loss_pct
        1.0
    """

    cert_expiry_days: float = 14.0
    p95_ms: float = 200.0
    loss_pct: float = 1.0
    loss_critical_pct: float = 20.0
    jitter_ms: float = 50.0


Rule = Callable[[dict[str, CheckResult], Thresholds], Iterable[Finding]]


def _days_left(tls: CheckResult) -> Optional[float]:
    for key in ("days_to_expiry", "days_left", "days_until_expiry", "expires_in_days"):
        value = tls.data.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return None


def cert_expiring(checks: dict[str, CheckResult], t: Thresholds) -> Iterable[Finding]:
    """A certificate valid for fewer than ``cert_expiry_days`` more days (the TLS check's ``days_to_expiry``).

    Not repeated when the TLS check already reported the expiry itself.

    Example::

        >>> tls = CheckResult(name="tls", status="ok", data={"days_to_expiry": 9})
        >>> [f.code for f in cert_expiring({"tls": tls}, Thresholds())]
        ['rules.cert_expiring']
    """
    tls = checks.get("tls")
    if tls is None:
        return
    days = _days_left(tls)
    if days is None or days < 0 or days >= t.cert_expiry_days:
        return
    if any("expir" in f.code for f in tls.findings):
        return
    yield Finding(
        check="rules",
        code="rules.cert_expiring",
        severity="warning",
        message=f"the server certificate expires in {days:.0f} days (under {t.cert_expiry_days:g})",
        recommendation="renew the certificate now, and automate renewal (ACME) with an alert before expiry",
    )


def latency_p95(checks: dict[str, CheckResult], t: Thresholds) -> Iterable[Finding]:
    """p95 latency of the heartbeat burst, or of the throughput test, above ``p95_ms``.

    Example::

        >>> lat = CheckResult(name="latency", status="ok", data={"p95_ms": 20.0})
        >>> list(latency_p95({"latency": lat}, Thresholds()))
        []
    """
    for name, what in (("latency", "heartbeat round trips"), ("throughput", "requests under load")):
        c = checks.get(name)
        p95 = c.data.get("p95_ms") if c is not None else None
        if isinstance(p95, (int, float)) and p95 > t.p95_ms:
            yield Finding(
                check="rules",
                code="rules.latency_p95" if name == "latency" else "rules.load_p95",
                severity="warning",
                message=f"p95 latency of {what} is {p95:.1f} ms (threshold {t.p95_ms:g} ms)",
                recommendation="look for a slow network path (route check) or a busy server; "
                + (
                    "add connections or lower concurrency"
                    if name == "throughput"
                    else "compare with the TCP connect time"
                ),
            )


def packet_loss(checks: dict[str, CheckResult], t: Thresholds) -> Iterable[Finding]:
    """Heartbeats lost above ``loss_pct`` (warning) or ``loss_critical_pct`` (critical); not when none answered.

    Example::

        >>> lat = CheckResult(name="latency", status="ok", data={"loss_pct": 5.0, "received": 19})
        >>> [f.severity for f in packet_loss({"latency": lat}, Thresholds())]
        ['warning']
    """
    c = checks.get("latency")
    if c is None or not c.data.get("received"):
        return  # nothing answered: the latency check itself says so
    loss = c.data.get("loss_pct") or 0.0
    if loss > t.loss_pct:
        yield Finding(
            check="rules",
            code="rules.packet_loss",
            severity="critical" if loss >= t.loss_critical_pct else "warning",
            message=f"{loss:g} % of heartbeats got no answer in time (threshold {t.loss_pct:g} %)",
            recommendation="a congested or lossy path, or a server that stalls: check the route and the server's load",
        )


def jitter(checks: dict[str, CheckResult], t: Thresholds) -> Iterable[Finding]:
    """Jitter of the heartbeat burst above ``jitter_ms``.

    Example::

        >>> lat = CheckResult(name="latency", status="ok", data={"jitter_ms": 80.0})
        >>> [f.code for f in jitter({"latency": lat}, Thresholds())]
        ['rules.jitter']
    """
    c = checks.get("latency")
    value = c.data.get("jitter_ms") if c is not None else None
    if isinstance(value, (int, float)) and value > t.jitter_ms:
        yield Finding(
            check="rules",
            code="rules.jitter",
            severity="warning",
            message=f"latency varies by {value:.1f} ms between heartbeats (threshold {t.jitter_ms:g} ms)",
            recommendation="set request timeouts well above the p95, and look for a congested path",
        )


RULES: tuple[Rule, ...] = (cert_expiring, latency_p95, packet_loss, jitter)


def _num(value: Any) -> Optional[float]:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _fmt(value: Optional[float], unit: str, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f} {unit}".strip()


@dataclass(kw_only=True)
class DiagnosticsReport:
    """What one diagnosis found: the checks, the figures, the verdict. See the module doc.

    ``checks`` are kept in the order they ran; ``rules`` and ``thresholds``
    judge them (defaults: :data:`RULES`, :class:`Thresholds()`).

    Example::

        >>> from nexus_green.diagnostics.results import CheckResult, Finding
        >>> bad = CheckResult(name="tcp", status="failed", findings=(Finding(check="tcp", code="tcp.refused",
        ...     severity="critical", message="refused", recommendation="start the server"),))
        >>> r = DiagnosticsReport(endpoint="tcp://127.0.0.1:1", checks=[bad])
        >>> r.health, r.recommendations, r.exit_code
        ('unhealthy', ['start the server'], 2)
    """

    endpoint: str
    checks: list[CheckResult] = field(default_factory=list)
    connection_id: str = field(default_factory=lambda: f"diag-{uuid.uuid4().hex[:12]}")
    timestamp: datetime.datetime = field(default_factory=lambda: datetime.datetime.now(datetime.timezone.utc))
    duration_ms: float = 0.0
    thresholds: Thresholds = field(default_factory=Thresholds)
    rules: Sequence[Rule] = RULES

    # ------------------------------------------------------------------ lookups
    def check(self, name: str) -> Optional[CheckResult]:
        """The result of the check called ``name``, or None if it did not run."""
        for c in self.checks:
            if c.name == name:
                return c
        return None

    def _by_name(self) -> dict[str, CheckResult]:
        return {c.name: c for c in self.checks}

    def _data(self, check: str, key: str) -> Optional[float]:
        c = self.check(check)
        return None if c is None or c.status == "skipped" else _num(c.data.get(key))

    # ------------------------------------------------------------------ verdict
    @property
    def rule_findings(self) -> list[Finding]:
        """What the rules found in the figures."""
        by_name = self._by_name()
        return [f for rule in self.rules for f in rule(by_name, self.thresholds)]

    @property
    def issues(self) -> list[Finding]:
        """Every finding that counts (warning or critical), the worst first, then in check order.

        One cause seen by several checks (a refused port fails both the tcp
        and the reachability checks, ``tcp.refused`` and
        ``reachability.refused``) is listed once, under the first check.
        """
        found = [f for c in self.checks for f in c.findings] + self.rule_findings
        counted: list[Finding] = []
        seen: set[tuple[str, str, str]] = set()
        for f in found:
            key = (f.code.split(".", 1)[-1], f.severity, f.recommendation)
            if f.severity == "info" or key in seen:
                continue
            seen.add(key)
            counted.append(f)
        return sorted(counted, key=lambda f: -SEVERITIES.index(f.severity))

    @property
    def notes(self) -> list[Finding]:
        """Info findings: shown, not counted."""
        return [f for c in self.checks for f in c.findings if f.severity == "info"]

    @property
    def recommendations(self) -> list[str]:
        """The issues' recommendations, each once, in the issues' order."""
        out: list[str] = []
        for f in self.issues:
            if f.recommendation and f.recommendation not in out:
                out.append(f.recommendation)
        return out

    @property
    def health(self) -> str:
        """``unhealthy`` with a critical issue, ``degraded`` with a warning, else ``healthy``."""
        severities = {f.severity for f in self.issues}
        if "critical" in severities:
            return "unhealthy"
        return "degraded" if "warning" in severities else "healthy"

    @property
    def exit_code(self) -> int:
        """What ``nexus-green diagnose`` exits with: 2 when unhealthy, 0 otherwise."""
        return 2 if self.health == "unhealthy" else 0

    # ------------------------------------------------------------------ figures
    @property
    def network_quality(self) -> dict[str, Optional[float]]:
        """``bandwidthMbps``, ``latencyMs``, ``packetLossPct``, ``jitterMs`` (None when not measured)."""
        return {
            "bandwidthMbps": self._data("bandwidth", "bandwidth_mbps"),
            "latencyMs": self._data("latency", "avg_ms"),
            "packetLossPct": self._data("latency", "loss_pct") if self._data("latency", "sent") else None,
            "jitterMs": self._data("latency", "jitter_ms") if self._data("latency", "received") else None,
        }

    @property
    def performance(self) -> dict[str, Optional[float]]:  # memoryBytes is an int
        """``messagesPerSecond``, ``averageLatencyMs``, ``memoryBytes`` (resident), ``cpuPercent``."""
        measured = self._data("memory", "rss_bytes")
        memory: Optional[int] = int(measured) if measured is not None else None
        if memory is None:
            from .performance import rss_bytes

            memory = rss_bytes()
        return {
            "messagesPerSecond": self._data("throughput", "messages_per_s"),
            "averageLatencyMs": self._data("throughput", "avg_ms"),
            "memoryBytes": memory,
            "cpuPercent": self._data("cpu", "cpu_pct"),
        }

    # ------------------------------------------------------------------ outputs
    def to_dict(self) -> dict[str, Any]:
        """The JSON form (docs/diagnostics.schema.json)."""
        return {
            "schemaVersion": SCHEMA_VERSION,
            "timestamp": self.timestamp.isoformat().replace("+00:00", "Z"),
            "connectionId": self.connection_id,
            "endpoint": self.endpoint,
            "durationMs": round(self.duration_ms, 3),
            "connectionHealth": {
                "status": self.health,
                "issues": [f.to_dict() for f in self.issues],
                "recommendations": self.recommendations,
                "notes": [f.to_dict() for f in self.notes],
            },
            "networkQuality": self.network_quality,
            "performance": self.performance,
            "thresholds": {
                "certExpiryDays": self.thresholds.cert_expiry_days,
                "p95Ms": self.thresholds.p95_ms,
                "lossPct": self.thresholds.loss_pct,
                "jitterMs": self.thresholds.jitter_ms,
            },
            "checks": [c.to_dict() for c in self.checks],
        }

    def to_json(self, indent: Optional[int] = 2) -> str:
        """:meth:`to_dict` as JSON text."""
        return json.dumps(self.to_dict(), indent=indent, default=str)

    def _quality_rows(self) -> tuple[list[str], list[str]]:
        q, p = self.network_quality, self.performance
        mem = p["memoryBytes"]
        quality = [
            _fmt(q["bandwidthMbps"], "Mbps"),
            _fmt(q["latencyMs"], "ms", 3),
            _fmt(q["packetLossPct"], "%", 1),
            _fmt(q["jitterMs"], "ms", 3),
        ]
        perf = [
            _fmt(p["messagesPerSecond"], "msg/s", 0),
            _fmt(p["averageLatencyMs"], "ms", 3),
            "n/a" if mem is None else f"{mem / 2**20:,.1f} MiB",
            _fmt(p["cpuPercent"], "%", 1),
        ]
        return quality, perf

    def to_markdown(self) -> str:
        """A Markdown page, readable as plain text too."""
        quality, perf = self._quality_rows()
        lines = [
            f"# Diagnostics: {self.endpoint}",
            "",
            f"**Verdict: {self.health.upper()}**",
            "",
            f"- time: {self.to_dict()['timestamp']} ({self.duration_ms / 1000:.1f} s)",
            f"- connection id: {self.connection_id}",
            "",
            "## Issues",
            "",
        ]
        if not self.issues:
            lines.append("None found.")
        for f in self.issues:
            lines.append(f"- **{f.severity}** `{f.code}`: {f.message}")
            if f.recommendation:
                lines.append(f"  - what to do: {f.recommendation}")
        if self.notes:
            lines += ["", "Notes:", ""]
            lines += [f"- `{f.code}`: {f.message}" for f in self.notes]
        lines += [
            "",
            "## Network quality",
            "",
            "| bandwidth | latency (avg) | packet loss | jitter |",
            "|---|---|---|---|",
            "| " + " | ".join(quality) + " |",
            "",
            "## Performance",
            "",
            "| messages/s | average latency | memory (resident) | CPU |",
            "|---|---|---|---|",
            "| " + " | ".join(perf) + " |",
            "",
            "## Checks",
            "",
            "| check | status | time | result |",
            "|---|---|---|---|",
        ]
        for c in self.checks:
            lines.append(f"| {c.name} | {c.status} | {c.duration_ms:,.1f} ms | {summarize(c).replace('|', '/')} |")
        cpu = self.check("cpu")
        spots = cpu.data.get("hot_spots", []) if cpu is not None else []
        if spots:
            lines += ["", "## CPU hot spots (client process, during the load test)", ""]
            lines += ["| function | self | self % |", "|---|---|---|"]
            lines += [f"| `{s['function']}` | {s['self_ms']:,.1f} ms | {s['self_pct']:.1f} % |" for s in spots[:5]]
        return "\n".join(lines) + "\n"

    def to_text(self) -> str:
        """A short summary for a terminal."""
        quality, perf = self._quality_rows()
        lines = [f"{self.endpoint}: {self.health.upper()} ({self.duration_ms / 1000:.1f} s, {self.connection_id})"]
        for c in self.checks:
            lines.append(f"  {c.name:<13} {c.status:<8} {summarize(c)}")
        lines.append(f"  network: bandwidth {quality[0]}, latency {quality[1]}, loss {quality[2]}, jitter {quality[3]}")
        lines.append(f"  performance: {perf[0]}, average {perf[1]}, memory {perf[2]}, CPU {perf[3]}")
        if self.issues:
            lines.append("issues:")
            for f in self.issues:
                lines.append(f"  [{f.severity}] {f.message}")
                if f.recommendation:
                    lines.append(f"      -> {f.recommendation}")
        else:
            lines.append("no issues found")
        return "\n".join(lines) + "\n"


def summarize(c: CheckResult) -> str:
    """One line saying what a check found.

    Example::

        >>> summarize(CheckResult(name="route", status="skipped", skipped_reason="not Linux"))
        'skipped: not Linux'
    """
    if c.status == "skipped":
        return f"skipped: {c.skipped_reason}"
    d = c.data
    text = _SUMMARIES.get(c.name, lambda d: "")(d)
    problems = [f.message for f in c.findings if f.severity != "info"]
    if problems:
        text = f"{text}; {problems[0]}" if text else problems[0]
    return text or "ok"


def _summary_dns(d: dict[str, Any]) -> str:
    n = len(d.get("addresses", []))
    return f"{n} address(es) ({d.get('ipv4', 0)} IPv4, {d.get('ipv6', 0)} IPv6) in {d.get('time_ms', 0):.1f} ms"


def _summary_tcp(d: dict[str, Any]) -> str:
    ok = sum(1 for a in d.get("attempts", []) if a.get("ok"))
    best = d.get("connect_ms")
    return f"{ok}/{len(d.get('attempts', []))} address(es) connect" + (f", fastest {best:.2f} ms" if best else "")


def _summary_latency(d: dict[str, Any]) -> str:
    if not d.get("received"):
        return f"{d.get('received', 0)}/{d.get('sent', 0)} heartbeats answered"
    return (
        f"{d['received']}/{d['sent']} heartbeats, avg {d['avg_ms']:.3f} ms, p95 {d['p95_ms']:.3f} ms, "
        f"jitter {d['jitter_ms']:.3f} ms"
    )


def _summary_throughput(d: dict[str, Any]) -> str:
    if not d.get("completed"):
        return f"0/{d.get('requests', 0)} requests completed"
    return (
        f"{d['completed']} {'requests' if d['mode'] == 'client' else 'heartbeats'} x{d['concurrency']}: "
        f"{d['messages_per_s']:,.0f} msg/s, avg {d['avg_ms']:.3f} ms, p95 {d['p95_ms']:.3f} ms"
    )


def _summary_tls(d: dict[str, Any]) -> str:
    parts = []
    if d.get("protocol"):
        parts.append(str(d["protocol"]))
    cipher = d.get("cipher")
    if isinstance(cipher, dict) and cipher.get("name"):
        parts.append(str(cipher["name"]))
    days = _num(d.get("days_to_expiry"))
    if days is not None:
        parts.append(f"expires in {days:.0f} days" if days >= 0 else f"expired {-days:.0f} days ago")
    return ", ".join(parts)


_SUMMARIES: dict[str, Callable[[dict[str, Any]], str]] = {
    "dns": _summary_dns,
    "tcp": _summary_tcp,
    "reachability": lambda d: ("reachable" if d.get("reachable") else "unreachable") + f" ({d.get('via', 'direct')})",
    "protocol": lambda d: (
        f"speaks {d.get('speaks')}"
        + (f", heartbeat answered in {d['heartbeat_rtt_ms']:.2f} ms" if d.get("heartbeat_rtt_ms") is not None else "")
    ),
    "interfaces": lambda d: f"{len(d.get('interfaces', []))} interface(s), up: {', '.join(d.get('up', [])) or 'none'}",
    "route": lambda d: f"path MTU {d.get('path_mtu')} via {d.get('interface') or '?'} ({d.get('local_address')})",
    "latency": _summary_latency,
    "bandwidth": lambda d: f"{d.get('bandwidth_mbps')} Mbps over {d.get('transfers')} x {d.get('size')} B echoes",
    "throughput": _summary_throughput,
    "cpu": lambda d: f"{d.get('cpu_pct')} % CPU, {d.get('cpu_ms_per_message')} ms CPU per message",
    "buffers": lambda d: (
        f"{d.get('frames_per_write')} frames / {d.get('bytes_per_write')} B per write, "
        f"{d.get('bytes_per_read')} B per read"
    ),
    "memory": lambda d: (
        f"{d.get('growth_bytes')} B growth over {d.get('rounds')} rounds"
        + (" (leak suspected)" if d.get("leak_suspected") else "")
    ),
    "client": lambda d: str(d.get("repr", "")),
    "tls": _summary_tls,
}
