"""Run every check against one endpoint, in order, within one time budget, and build the DiagnosticsReport.

:func:`diagnose` is what ``nexus-green diagnose`` runs. The order follows
the path a request takes, and a check that needs what an earlier one found
missing is skipped with the reason instead of failing again:

1. ``interfaces``, ``dns``, ``route`` -- always;
2. ``tcp``, ``reachability`` -- a byte stream to the endpoint (through the
   proxy when there is one);
3. ``tls`` (with ``tls=True``) -- every certificate problem at once
   (:func:`nexus_green.diagnostics.tls.check_tls`, imported when needed);
4. ``protocol`` -- needs reachability;
5. ``latency``, ``bandwidth``, ``throughput``, ``cpu``, ``buffers``,
   ``memory`` -- need a peer that speaks NexusKit;
6. ``client`` -- when a live Client (or pool) is passed.

Every check has its own timeout, and ``budget`` bounds the whole run: the
heartbeat burst, the bandwidth, load and memory checks get at most what is
left of it, and a check that would start after it is spent is skipped,
saying so.
``progress(name, index, total)`` is called before each check (the command
line draws its progress line with it).

Example::

    >>> from nexus_green.testing import EmbeddedServer, FID_ECHO
    >>> with EmbeddedServer() as server:
    ...     report = diagnose(f"127.0.0.1:{server.port}", count=5, interval=0, echo_fid=FID_ECHO, load_count=50)
    >>> report.health, report.check("protocol").data["speaks"], report.network_quality["packetLossPct"]
    ('healthy', 'nexuskit', 0.0)
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any, Optional, Union

from .connection import check_client, check_dns, check_protocol, check_reachability, check_tcp
from .network import check_bandwidth, check_interfaces, check_latency, check_route
from .performance import check_memory_growth, run_load
from .report import DiagnosticsReport, Thresholds
from .results import CheckResult, Finding
from .target import Target

__all__ = ["CHECK_NAMES", "diagnose"]

CHECK_NAMES = (
    "interfaces",
    "dns",
    "route",
    "tcp",
    "reachability",
    "tls",
    "protocol",
    "latency",
    "bandwidth",
    "throughput",
    "memory",
    "client",
)
Progress = Callable[[str, int, int], None]


def _tls(target: Target, timeout: float) -> CheckResult:
    from .tls import check_tls  # the TLS part of the toolkit, imported only when TLS is diagnosed

    return check_tls(
        target.host,
        target.port,
        server_hostname=target.server_hostname,
        cafile=target.cafile,
        pins=target.pins,
        client_cert=target.client_cert,
        client_key=target.client_key,
        proxy=target.proxy_url,
        timeout=timeout,
    )


def diagnose(
    target: Union[Target, str, None] = None,
    *,
    tls: bool = False,
    proxy: Any = None,
    server_hostname: Optional[str] = None,
    cafile: Optional[str] = None,
    client_cert: Optional[str] = None,
    client_key: Optional[str] = None,
    pins: tuple[str, ...] = (),
    count: int = 20,
    interval: float = 0.05,
    echo_fid: Optional[int] = None,
    timeout: float = 5.0,
    budget: float = 120.0,
    load_count: int = 2000,
    concurrency: int = 8,
    load_duration: float = 10.0,
    memory_rounds: int = 5,
    memory_per_round: int = 100,
    client: Any = None,
    connection_id: Optional[str] = None,
    thresholds: Optional[Thresholds] = None,
    progress: Optional[Progress] = None,
    skip: tuple[str, ...] = (),
) -> DiagnosticsReport:
    """Diagnose ``target`` (a :class:`Target` or ``"HOST:PORT"`` with the options below); never raises for what it finds.

    Without a target, the endpoint of the live ``client`` is diagnosed
    (its host, port and TLS; pass a Target to add its proxy).

    * ``tls``, ``proxy``, ``server_hostname``, ``cafile``, ``client_cert``,
      ``client_key``, ``pins`` -- how to reach it (for a ``"HOST:PORT"``).
    * ``count`` / ``interval`` -- the heartbeat burst (latency, jitter, loss).
    * ``echo_fid`` -- an echo function: enables bandwidth, client-mode load
      (with buffer figures) and the memory check.
    * ``timeout`` -- each network step; ``budget`` -- the whole run.
    * ``load_count`` / ``concurrency`` / ``load_duration`` -- the throughput
      test's bounds; ``memory_rounds`` / ``memory_per_round`` -- the memory check.
    * ``client`` -- a live Client (or pool) whose state to report; its
      first connection's id becomes the report's ``connectionId`` unless
      ``connection_id`` is given.
    * ``skip`` -- names of checks not to run (from :data:`CHECK_NAMES`).

    Bad arguments (a malformed ``HOST:PORT`` or proxy URL, an unknown check
    name, a CA or client certificate file that does not exist) raise
    ValueError before anything runs.
    """
    unknown = set(skip) - set(CHECK_NAMES)
    if unknown:
        raise ValueError(f"unknown check(s) to skip: {', '.join(sorted(unknown))}; known: {', '.join(CHECK_NAMES)}")
    if target is None:
        if client is None:
            raise ValueError("diagnose needs a target (HOST:PORT or a Target), or a live client= to take it from")
        ep: Any = getattr(client, "endpoint", None) or getattr(getattr(client, "pool", None), "endpoint", None)
        if ep is None:
            raise ValueError(f"client= has no endpoint to diagnose: {client!r}")
        target = Target(host=ep.host, port=ep.port, tls=ep.tls)
    if isinstance(target, str):
        target = Target.parse(
            target,
            tls=tls,
            proxy=proxy,
            server_hostname=server_hostname,
            cafile=cafile,
            client_cert=client_cert,
            client_key=client_key,
            pins=tuple(pins),
        )
    for what, path in (
        ("cafile", target.cafile),
        ("client_cert", target.client_cert),
        ("client_key", target.client_key),
    ):
        if path is not None and not os.path.isfile(path):
            raise ValueError(f"{what} {path!r} is not a readable file")
    t0 = time.perf_counter()
    end = time.monotonic() + budget
    if connection_id is None and client is not None:
        conns = getattr(getattr(client, "pool", client), "connections", [])
        connection_id = conns[0].conn_id if conns else None
    report = DiagnosticsReport(endpoint=target.label, thresholds=thresholds or Thresholds())
    if connection_id:
        report.connection_id = connection_id
    t = target
    plan: list[tuple[str, Callable[[], Any]]] = [
        ("interfaces", check_interfaces),
        ("dns", lambda: check_dns(t, timeout=timeout)),
        ("route", lambda: check_route(t, timeout=timeout)),
        ("tcp", lambda: check_tcp(t, timeout=timeout)),
        ("reachability", lambda: check_reachability(t, timeout=timeout)),
    ]
    if t.tls:
        plan.append(("tls", lambda: _tls(t, timeout)))

    def left(limit: float) -> float:
        """``limit`` seconds, or what is left of the run's budget if that is less."""
        return max(0.001, min(limit, end - time.monotonic()))

    plan += [
        ("protocol", lambda: check_protocol(t, timeout=timeout)),
        (
            "latency",
            lambda: check_latency(
                t,
                count=count,
                interval=interval,
                probe_timeout=timeout,
                timeout=timeout,
                budget=left(count * (interval + timeout) + timeout),
            ),
        ),
        ("bandwidth", lambda: check_bandwidth(t, echo_fid=echo_fid, timeout=left(max(timeout, 10.0)))),
        (
            "throughput",
            lambda: run_load(
                t,
                echo_fid=echo_fid,
                count=load_count,
                concurrency=concurrency,
                duration=left(load_duration),
                timeout=timeout,
            ),
        ),
        (
            "memory",
            lambda: check_memory_growth(
                t,
                echo_fid=echo_fid,
                rounds=memory_rounds,
                per_round=memory_per_round,
                timeout=timeout,
                duration=left(20.0),
            ),
        ),
    ]
    if client is not None:
        plan.append(("client", lambda: check_client(client)))
    plan = [(name, fn) for name, fn in plan if name not in skip]
    for i, (name, fn) in enumerate(plan):
        if progress is not None:
            progress(name, i, len(plan))
        why = _prerequisite(name, report)
        if time.monotonic() >= end:
            why = f"the run's time budget ({budget:g} s) was spent before this check"
        if why is not None:
            report.checks += [CheckResult(name=n, status="skipped", skipped_reason=why) for n in _names(name)]
            continue
        try:
            out = fn()
        except Exception as exc:  # a check that breaks must not hide the others, nor look healthy
            out = CheckResult(
                name=name,
                status="failed",
                findings=(
                    Finding(
                        check=name,
                        code=f"{name}.crashed",
                        severity="critical",
                        message=f"the {name} check itself failed: {type(exc).__name__}: {exc}",
                        recommendation="report this as a bug in nexus_green diagnostics",
                    ),
                ),
            )
        report.checks += list(out) if isinstance(out, tuple) else [out]
    if progress is not None:
        progress("done", len(plan), len(plan))
    report.duration_ms = (time.perf_counter() - t0) * 1000.0
    return report


def _names(name: str) -> list[str]:
    return ["throughput", "cpu", "buffers"] if name == "throughput" else [name]


def _prerequisite(name: str, report: DiagnosticsReport) -> Optional[str]:
    """Why ``name`` cannot run given what ran before it, or None."""
    if name in ("interfaces", "dns", "route", "tcp", "reachability", "client"):
        return None
    reach = report.check("reachability")
    if reach is not None and reach.status == "skipped":
        return f"the reachability check did not run ({reach.skipped_reason})"
    if reach is not None and not reach.data.get("reachable"):
        return "the endpoint is unreachable (see the reachability check)"
    if name in ("tls", "protocol"):
        return None
    proto = report.check("protocol")
    if proto is not None and proto.status == "skipped":
        return f"the protocol check did not run ({proto.skipped_reason})"
    if proto is not None and proto.data.get("speaks") != "nexuskit":
        return f"the peer does not speak NexusKit (the protocol check found: {proto.data.get('speaks')})"
    if proto is not None and proto.data.get("heartbeat_rtt_ms") is None:
        return "the peer did not answer a heartbeat (see the protocol check): nothing to measure with"
    if proto is not None and proto.data.get("tls") is False and report.endpoint.startswith("tls://"):
        return "the peer answers NexusKit only without TLS (see the protocol check)"
    return None
