"""What every diagnostic check returns: a :class:`CheckResult` with its :class:`Finding` list.

A check never raises for a problem it finds: an unreachable host, a refused
port, a bad certificate or a peer that speaks another protocol are findings
in its result, so one run reports every problem at once. ``status`` sums the
check up (``ok``, ``warning``, ``failed``, ``skipped``); ``data`` holds its
measurements as JSON-ready values; ``findings`` are what the report's rules
turn into issues and recommendations.

Example::

    >>> r = CheckResult(name="tcp", status="failed", duration_ms=0.4,
    ...     findings=(Finding(check="tcp", code="tcp.refused", severity="critical",
    ...                       message="127.0.0.1:1 refused the connection",
    ...                       recommendation="start the server or fix the port"),))
    >>> r.worst_severity, r.to_dict()["findings"][0]["code"]
    ('critical', 'tcp.refused')
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["SEVERITIES", "STATUSES", "CheckResult", "Finding", "Severity", "Status", "status_of"]

Severity = Literal["info", "warning", "critical"]
Status = Literal["ok", "warning", "failed", "skipped"]
SEVERITIES: tuple[Severity, ...] = ("info", "warning", "critical")
STATUSES: tuple[Status, ...] = ("ok", "warning", "failed", "skipped")


@dataclass(frozen=True, slots=True, kw_only=True)
class Finding:
    """One problem (or notable fact) a check found.

    ``code`` is a stable machine name, ``<check>.<what>`` (``tls.expired``,
    ``tls.hostname_mismatch``, ``dns.no_ipv6``...); ``message`` says what was
    seen, with the figures; ``recommendation`` says what to do about it.

    Example::

        >>> Finding(check="tls", code="tls.expired", severity="critical", message="expired 3 days ago").to_dict()["severity"]
        'critical'
    """

    check: str
    code: str
    severity: Severity
    message: str
    recommendation: str = ""

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ValueError(f"severity must be one of {SEVERITIES}, not {self.severity!r}")

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: every field by name."""
        return {
            "check": self.check,
            "code": self.code,
            "severity": self.severity,
            "message": self.message,
            "recommendation": self.recommendation,
        }


def status_of(findings: Iterable[Finding]) -> Status:
    """A check's status from its findings: ``failed`` with a critical one, ``warning`` with a warning, else ``ok``.

    Example::

        >>> status_of([]), status_of([Finding(check="x", code="x.slow", severity="warning", message="slow")])
        ('ok', 'warning')
    """
    worst: Status = "ok"
    for f in findings:
        if f.severity == "critical":
            return "failed"
        if f.severity == "warning":
            worst = "warning"
    return worst


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckResult:
    """The outcome of one check: its status, measurements, findings, and why it was skipped if it was.

    Example::

        >>> CheckResult(name="route", status="skipped", skipped_reason="no traceroute here").to_dict()["skipped_reason"]
        'no traceroute here'
    """

    name: str
    status: Status
    duration_ms: float = 0.0
    data: dict[str, Any] = field(default_factory=dict)
    findings: tuple[Finding, ...] = ()
    skipped_reason: str = ""

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, not {self.status!r}")
        if self.status == "skipped" and not self.skipped_reason:
            raise ValueError("a skipped check says why: pass skipped_reason")

    @property
    def worst_severity(self) -> Severity | None:
        """The most severe finding's severity, or None without findings."""
        worst: Severity | None = None
        for f in self.findings:
            if worst is None or SEVERITIES.index(f.severity) > SEVERITIES.index(worst):
                worst = f.severity
        return worst

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (docs/diagnostics.schema.json)."""
        return {
            "name": self.name,
            "status": self.status,
            "duration_ms": round(self.duration_ms, 3),
            "data": self.data,
            "findings": [f.to_dict() for f in self.findings],
            "skipped_reason": self.skipped_reason,
        }
