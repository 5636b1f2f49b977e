"""Diagnostics toolkit (issue 19): checks that report every problem at once, and ``nexus-green diagnose``.

An app-layer package (docs/design.md): it uses the library, the library
never imports it. Every check returns a :class:`CheckResult` and never
raises for what it finds; :func:`diagnose` runs them all within one time
budget and returns a :class:`DiagnosticsReport` (JSON, Markdown, text).
docs/diagnostics.md is the guide.

* connection: :func:`check_dns`, :func:`check_tcp`, :func:`check_reachability`,
  :func:`check_protocol`, :func:`check_client` (a live Client or pool);
* TLS: :func:`check_tls` (nexus_green.diagnostics.tls);
* network: :func:`check_interfaces`, :func:`check_latency`,
  :func:`check_bandwidth`, :func:`check_route`;
* performance: :func:`run_load` (throughput, CPU hot spots, buffers),
  :func:`check_memory_growth`.

Example::

    >>> from nexus_green.testing import RefusingPort
    >>> with RefusingPort() as port:
    ...     report = diagnose(f"127.0.0.1:{port.port}", timeout=2)
    >>> report.health, report.issues[0].code, report.exit_code
    ('unhealthy', 'tcp.refused', 2)
"""

from .connection import (
    PROTOCOLS,
    check_client,
    check_dns,
    check_protocol,
    check_reachability,
    check_tcp,
    classify_bytes,
)
from .network import check_bandwidth, check_interfaces, check_latency, check_route, list_interfaces
from .performance import check_memory_growth, rss_bytes, run_load
from .report import HEALTH, RULES, DiagnosticsReport, Thresholds
from .results import SEVERITIES, STATUSES, CheckResult, Finding, Severity, Status
from .runner import CHECK_NAMES, diagnose
from .target import Target, open_link, parse_hostport


def check_tls(*args, **kwargs):  # type: ignore[no-untyped-def]
    """:func:`nexus_green.diagnostics.tls.check_tls`, imported when first called (it needs ``cryptography``).

    Example::

        >>> from nexus_green.testing import RefusingPort
        >>> with RefusingPort() as port:
        ...     check_tls("127.0.0.1", port.port, timeout=2).findings[0].code
        'tls.unreachable'
    """
    from .tls import check_tls as impl

    return impl(*args, **kwargs)


__all__ = [
    "CHECK_NAMES",
    "HEALTH",
    "PROTOCOLS",
    "RULES",
    "SEVERITIES",
    "STATUSES",
    "CheckResult",
    "DiagnosticsReport",
    "Finding",
    "Severity",
    "Status",
    "Target",
    "Thresholds",
    "check_bandwidth",
    "check_client",
    "check_dns",
    "check_interfaces",
    "check_latency",
    "check_memory_growth",
    "check_protocol",
    "check_reachability",
    "check_route",
    "check_tcp",
    "check_tls",
    "classify_bytes",
    "diagnose",
    "list_interfaces",
    "open_link",
    "parse_hostport",
    "rss_bytes",
    "run_load",
]
