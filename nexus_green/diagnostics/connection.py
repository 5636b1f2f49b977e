"""Connection diagnostics: DNS, TCP connect per address, reachability, the protocol the peer speaks, a live Client's state.

Each function returns a :class:`~nexus_green.diagnostics.results.CheckResult`
and never raises for what it finds: a name that does not resolve, a refused
port, a peer that answers in HTTP are findings.

* :func:`check_dns` -- every address of the host (IPv4 and IPv6), and the
  time the lookup took, through gevent's resolver (works unpatched).
* :func:`check_tcp` -- a TCP connect to each address, with its time (the
  proxy's addresses when a proxy is used: that is where the client connects).
* :func:`check_reachability` -- one byte stream to the endpoint the way the
  client gets it (directly or through the SOCKS5 proxy).
* :func:`check_protocol` -- sends a NexusKit heartbeat on a raw link and
  names what answers: ``nexuskit`` (a NexusKit frame came back), ``http``
  (an ``HTTP/`` status line), ``tls`` (a TLS record on a plain port, or a
  plain port that completes a TLS handshake), ``garbage``, ``nothing``
  (silence until the timeout) or ``closed``.
* :func:`check_client` -- the state of a live :class:`~nexus_green.Client`
  (or pool): its pool figures and repr, each connection's state, and any
  circuit breaker among its middlewares.

Example::

    >>> from nexus_green.testing import EmbeddedServer
    >>> with EmbeddedServer() as server:
    ...     r = check_protocol(Target(host=server.host, port=server.port), timeout=5)
    >>> r.status, r.data["speaks"]
    ('ok', 'nexuskit')
"""

from __future__ import annotations

import socket as _stdsocket
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Optional

from gevent import socket as gsocket

from ..errors import (
    ConnectionRefused,
    ConnectTimeout,
    DNSError,
    NexusError,
    ProtocolError,
    ProxyError,
    TLSError,
)
from ..protocol.frames import TAG, FrameDecoder, heartbeat_frame
from .results import CheckResult, Finding, Severity, status_of
from .target import Target, open_link

__all__ = [
    "PROTOCOLS",
    "check_client",
    "check_dns",
    "check_protocol",
    "check_reachability",
    "check_tcp",
    "classify_bytes",
    "connect_failure",
]

Resolver = Callable[[str, int], Sequence[Any]]
PROTOCOLS = ("nexuskit", "http", "tls", "garbage", "nothing", "closed", "unreachable")
_TAG_BYTES = TAG.to_bytes(2, "big")


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 3)


def connect_failure(check: str, exc: BaseException, label: str) -> Finding:
    """The finding for a failed connect, named by what failed (refused, timeout, dns, proxy, tls, unreachable).

    Example::

        >>> from nexus_green.errors import ConnectionRefused
        >>> f = connect_failure("tcp", ConnectionRefused("refused"), "tcp://127.0.0.1:1")
        >>> f.code, f.severity
        ('tcp.refused', 'critical')
    """
    if isinstance(exc, ConnectionRefused) or isinstance(exc, ConnectionRefusedError):
        return Finding(
            check=check,
            code=f"{check}.refused",
            severity="critical",
            message=f"{label} refused the connection: nothing listens on that port",
            recommendation="start the server, or fix the port (is it the right host?)",
        )
    if isinstance(exc, (ConnectTimeout, TimeoutError)):
        return Finding(
            check=check,
            code=f"{check}.timeout",
            severity="critical",
            message=f"connecting to {label} timed out: {exc}",
            recommendation="check that a firewall does not drop the packets and that the server accepts connections",
        )
    if isinstance(exc, (DNSError, _stdsocket.gaierror)):
        return Finding(
            check=check,
            code=f"{check}.dns",
            severity="critical",
            message=f"the name of {label} does not resolve: {exc}",
            recommendation="check the host name and the DNS configuration (/etc/resolv.conf)",
        )
    if isinstance(exc, ProxyError):
        return Finding(
            check=check,
            code=f"{check}.proxy",
            severity="critical",
            message=f"the SOCKS5 proxy did not open a tunnel to {label}: {exc}",
            recommendation="check the proxy address and credentials, and whether it may reach the endpoint",
        )
    if isinstance(exc, TLSError):
        return Finding(
            check=check,
            code=f"{check}.tls",
            severity="critical",
            message=f"the TLS handshake with {label} failed: {exc}",
            recommendation="run with --tls only against a TLS port; see the tls check for the certificate",
        )
    return Finding(
        check=check,
        code=f"{check}.unreachable",
        severity="critical",
        message=f"{label} is unreachable: {exc}",
        recommendation="check the route to the host (interfaces, gateway, firewall)",
    )


# ---------------------------------------------------------------------------- DNS
def _family(family: int) -> str:
    if family == _stdsocket.AF_INET:
        return "ipv4"
    return "ipv6" if family == _stdsocket.AF_INET6 else str(family)


def check_dns(
    target: Target, *, timeout: float = 5.0, slow_ms: float = 500.0, resolver: Optional[Resolver] = None
) -> CheckResult:
    """Resolve the target's host (and the proxy's, when there is one): every address, its family, the time taken.

    ``data``: ``host``, ``addresses`` (``[{"address", "family"}]``), ``ipv4``,
    ``ipv6`` (counts), ``time_ms``, ``literal`` (the host is an IP address),
    and ``proxy`` (the same for the proxy host). A name that does not resolve
    is critical, except through a proxy that resolves names itself
    (``remote_dns``), where it is a warning; a lookup slower than
    ``slow_ms`` is a warning. ``resolver(host, port)`` replaces gevent's
    ``getaddrinfo`` (it returns the same tuples).

    Example::

        >>> r = check_dns(Target(host="127.0.0.1", port=80))
        >>> r.status, r.data["addresses"], r.data["literal"]
        ('ok', [{'address': '127.0.0.1', 'family': 'ipv4'}], True)
    """
    t0 = time.perf_counter()
    findings: list[Finding] = []
    proxy = target.proxy_config
    data = _resolve(target.host, target.port, timeout, resolver)
    remote = proxy is not None and proxy.remote_dns
    if data["error"]:
        findings.append(
            Finding(
                check="dns",
                code="dns.failed",
                severity="warning" if remote else "critical",
                message=f"{target.host} does not resolve here: {data['error']}"
                + (" (the proxy resolves it, so this only matters without the proxy)" if remote else ""),
                recommendation="check the host name and the DNS configuration (/etc/resolv.conf)",
            )
        )
    elif data["time_ms"] > slow_ms:
        findings.append(
            Finding(
                check="dns",
                code="dns.slow",
                severity="warning",
                message=f"resolving {target.host} took {data['time_ms']:.0f} ms",
                recommendation="use a closer or caching resolver, or connect by address",
            )
        )
    if proxy is not None:
        pdata = _resolve(proxy.host, proxy.port, timeout, resolver)
        data["proxy"] = pdata
        if pdata["error"]:
            findings.append(
                Finding(
                    check="dns",
                    code="dns.proxy_failed",
                    severity="critical",
                    message=f"the proxy host {proxy.host} does not resolve: {pdata['error']}",
                    recommendation="check the proxy URL",
                )
            )
    return CheckResult(
        name="dns",
        status=status_of(findings),
        duration_ms=_ms(time.perf_counter() - t0),
        data=data,
        findings=tuple(findings),
    )


def _resolve(host: str, port: int, timeout: float, resolver: Optional[Resolver] = None) -> dict[str, Any]:
    literal = True
    try:
        _stdsocket.inet_pton(_stdsocket.AF_INET6 if ":" in host else _stdsocket.AF_INET, host)
    except OSError:
        literal = False
    t0 = time.perf_counter()
    error = ""
    infos: list[Any] = []
    try:
        with _Timeout(timeout):
            if resolver is not None:
                infos = list(resolver(host, port))
            else:
                infos = gsocket.getaddrinfo(host, port, 0, _stdsocket.SOCK_STREAM, _stdsocket.IPPROTO_TCP)
    except TimeoutError:
        error = f"no answer within {timeout:g} s"
    except (OSError, UnicodeError) as exc:
        error = str(exc)
    elapsed = time.perf_counter() - t0
    seen: list[dict[str, str]] = []
    for family, _, _, _, addr in infos:
        entry = {"address": str(addr[0]), "family": _family(family)}
        if entry not in seen:
            seen.append(entry)
    return {
        "host": host,
        "addresses": seen,
        "ipv4": sum(1 for e in seen if e["family"] == "ipv4"),
        "ipv6": sum(1 for e in seen if e["family"] == "ipv6"),
        "time_ms": _ms(elapsed),
        "literal": literal,
        "error": error,
    }


class _Timeout:
    """A gevent.Timeout that surfaces as TimeoutError and never catches anybody else's."""

    def __init__(self, seconds: float) -> None:
        import gevent

        self._t = gevent.Timeout(seconds)

    def __enter__(self) -> None:
        self._t.start()

    def __exit__(self, tp: Any, exc: Any, tb: Any) -> None:
        self._t.close()
        if exc is self._t:
            raise TimeoutError("timed out") from None


# ---------------------------------------------------------------------------- TCP
def check_tcp(
    target: Target, *, timeout: float = 5.0, slow_ms: float = 200.0, resolver: Optional[Resolver] = None
) -> CheckResult:
    """A TCP connect to every address of the host the client dials (the proxy's when there is one), timed.

    ``data``: ``dialled`` (``host:port``), ``attempts`` (``[{"address",
    "family", "ok", "connect_ms", "error"}]``), ``connect_ms`` (the fastest
    success). Every address failing is critical; some failing is a warning
    (clients wait for those, then try the next); a connect slower than
    ``slow_ms`` is a warning. ``resolver`` as for :func:`check_dns`.

    Example::

        >>> from nexus_green.testing import RefusingPort
        >>> with RefusingPort() as port:
        ...     r = check_tcp(Target(host=port.host, port=port.port), timeout=2)
        >>> r.status, [f.code for f in r.findings]
        ('failed', ['tcp.refused'])
    """
    t0 = time.perf_counter()
    proxy = target.proxy_config
    host, port = (target.host, target.port) if proxy is None else (proxy.host, proxy.port)
    label = f"{host}:{port}" if proxy is None else f"the proxy {proxy.label}"
    findings: list[Finding] = []
    attempts: list[dict[str, Any]] = []
    resolved = _resolve(host, port, timeout, resolver)
    if resolved["error"]:
        findings.append(connect_failure("tcp", DNSError(resolved["error"]), label))
    last_error: Optional[BaseException] = None
    for entry in resolved["addresses"]:
        family = _stdsocket.AF_INET6 if entry["family"] == "ipv6" else _stdsocket.AF_INET
        sock = gsocket.socket(family, _stdsocket.SOCK_STREAM)
        sock.settimeout(timeout)
        a0 = time.perf_counter()
        try:
            sock.connect((entry["address"], port))
            attempts.append({**entry, "ok": True, "connect_ms": _ms(time.perf_counter() - a0), "error": ""})
        except OSError as exc:
            last_error = exc
            attempts.append({**entry, "ok": False, "connect_ms": _ms(time.perf_counter() - a0), "error": str(exc)})
        finally:
            sock.close()
    ok = [a for a in attempts if a["ok"]]
    if attempts and not ok and last_error is not None:
        findings.append(connect_failure("tcp", last_error, label))
    elif ok and len(ok) < len(attempts):
        bad = ", ".join(f"{a['address']} ({a['error']})" for a in attempts if not a["ok"])
        findings.append(
            Finding(
                check="tcp",
                code="tcp.some_addresses_fail",
                severity="warning",
                message=f"{len(ok)} of {len(attempts)} addresses of {host} accept connections; failing: {bad}",
                recommendation="remove the dead addresses from DNS, or make the server listen on every family",
            )
        )
    best = min((a["connect_ms"] for a in ok), default=None)
    if best is not None and best > slow_ms:
        findings.append(
            Finding(
                check="tcp",
                code="tcp.slow_connect",
                severity="warning",
                message=f"the fastest TCP connect to {label} took {best:.0f} ms",
                recommendation="keep connections open (pool min_size) so requests do not pay for connects",
            )
        )
    data = {"dialled": f"{host}:{port}", "attempts": attempts, "connect_ms": best}
    return CheckResult(
        name="tcp",
        status=status_of(findings),
        duration_ms=_ms(time.perf_counter() - t0),
        data=data,
        findings=tuple(findings),
    )


def check_reachability(target: Target, *, timeout: float = 5.0) -> CheckResult:
    """One byte stream to the endpoint the way the client gets it: directly, or through the SOCKS5 proxy.

    ``data``: ``reachable``, ``via`` (``direct`` or the proxy), ``connect_ms``,
    ``error``. No TLS here: :func:`check_protocol` and the TLS check do that.

    Example::

        >>> from nexus_green.testing import RefusingPort
        >>> with RefusingPort() as port:
        ...     r = check_reachability(Target(host=port.host, port=port.port), timeout=2)
        >>> r.data["reachable"], r.findings[0].code
        (False, 'reachability.refused')
    """
    t0 = time.perf_counter()
    proxy = target.proxy_config
    data: dict[str, Any] = {"reachable": False, "via": "direct" if proxy is None else proxy.label, "error": ""}
    findings: list[Finding] = []
    try:
        sock = open_link(target, timeout, tls=False)
    except NexusError as exc:
        data["error"] = str(exc)
        findings.append(connect_failure("reachability", exc, target.label))
    else:
        sock.close()
        data["reachable"] = True
    data["connect_ms"] = _ms(time.perf_counter() - t0)
    return CheckResult(
        name="reachability",
        status=status_of(findings),
        duration_ms=data["connect_ms"],
        data=data,
        findings=tuple(findings),
    )


# ---------------------------------------------------------------------------- protocol
def classify_bytes(data: bytes) -> str:
    """Name the protocol of the first bytes a peer sent: ``nexuskit``, ``http``, ``tls``, ``garbage`` (or ``nothing``).

    Example::

        >>> classify_bytes(heartbeat_frame(response=True)), classify_bytes(b"HTTP/1.1 400 Bad Request\\r\\n")
        ('nexuskit', 'http')
        >>> classify_bytes(b"<!DOCTYPE HTML>\\n<html>"), classify_bytes(b"\\x15\\x03\\x03\\x00\\x02\\x02\\x46")
        ('http', 'tls')
        >>> classify_bytes(b"hello"), classify_bytes(b"")
        ('garbage', 'nothing')
    """
    if not data:
        return "nothing"
    if len(data) >= 6 and data[4:6] == _TAG_BYTES:
        return "nexuskit"
    if data.startswith(b"HTTP/") or (len(data) < 5 and b"HTTP/".startswith(data)):
        return "http"
    if data.lstrip()[:14].lower().startswith((b"<!doctype html", b"<html")):
        return "http"  # an HTTP/0.9-style answer (a request line without a version): the page alone
    if data[0] in (0x15, 0x16) and (len(data) < 2 or data[1] == 0x03):
        return "tls"
    return "garbage"


def _probe(target: Target, timeout: float, use_tls: bool) -> dict[str, Any]:
    """Send one heartbeat and read what comes back, until a heartbeat answer, foreign bytes, EOF or the timeout."""
    out: dict[str, Any] = {"speaks": "nothing", "first_bytes": "", "heartbeat_rtt_ms": None, "frames": 0, "error": ""}
    try:
        sock = open_link(target, timeout, tls=use_tls)
    except NexusError as exc:
        out["speaks"] = "unreachable"
        out["error"] = str(exc)
        out["exception"] = exc
        return out
    got = b""
    decoder = FrameDecoder()
    end = time.monotonic() + timeout
    # A line-based server (HTTP, SMTP, Redis) waits for the end of a line that a binary heartbeat
    # never brings, and looks silent: after a short silence, one empty line makes it answer.
    nudge_at: Optional[float] = None if use_tls else time.monotonic() + min(1.0, timeout / 2)
    try:
        t0 = time.perf_counter()
        sock.sendall(heartbeat_frame())
        while True:
            now = time.monotonic()
            left = end - now
            if left <= 0:
                break
            if nudge_at is not None and not got:
                if now >= nudge_at:
                    nudge_at = None
                    out["nudged"] = True
                    sock.sendall(b"\r\n\r\n")
                else:
                    left = min(left, nudge_at - now)
            sock.settimeout(left)
            try:
                chunk = sock.recv(4096)
            except TimeoutError:
                if nudge_at is not None and not got and time.monotonic() < end:
                    continue  # time to nudge
                raise
            if not chunk:
                out["speaks"] = "closed" if not got else classify_bytes(got)
                out["error"] = "the peer closed the connection"
                break
            if len(got) < 64:
                got += chunk[: 64 - len(got)]
            kind = classify_bytes(got)
            if kind != "nexuskit":
                if len(got) >= 5 or kind != "http":
                    out["speaks"] = kind
                    break
                continue
            out["speaks"] = "nexuskit"
            try:
                frames = decoder.feed(chunk)
            except ProtocolError as exc:
                out["speaks"] = "garbage"
                out["error"] = f"NexusKit framing broke: {exc}"
                break
            out["frames"] += len(frames)
            if any(f.is_heartbeat and f.is_response for f in frames):
                out["heartbeat_rtt_ms"] = _ms(time.perf_counter() - t0)
                break
    except TimeoutError:
        out["speaks"] = classify_bytes(got)
    except OSError as exc:
        out["speaks"] = "closed" if not got else classify_bytes(got)
        out["error"] = f"the peer reset the connection ({exc})" if isinstance(exc, ConnectionResetError) else str(exc)
    finally:
        sock.close()
    out["first_bytes"] = got[:32].hex(" ")
    return out


_SPEAKS = {
    "http": ("protocol.http", "the peer answers in HTTP, not NexusKit: is this a web server's port?"),
    "tls": ("protocol.tls_on_plain", "the peer speaks TLS: connect with tls:// (nexus-green diagnose --tls)"),
    "garbage": ("protocol.garbage", "the peer sends bytes that are not NexusKit frames: is this the right service?"),
    "nothing": ("protocol.silent", "the peer accepted the connection but answered nothing: is the service hung?"),
    "closed": ("protocol.closed", "the peer closed the connection without answering: check the server's logs"),
}


def check_protocol(target: Target, *, timeout: float = 5.0) -> CheckResult:
    """Send a NexusKit heartbeat on a raw link and name what answers.

    ``data``: ``speaks`` (one of :data:`PROTOCOLS`), ``tls`` (whether the
    link used TLS), ``first_bytes`` (hex, up to 32), ``heartbeat_rtt_ms``,
    ``frames`` (NexusKit frames read), ``error``, ``nudged`` (present and
    True when a silent plain peer was sent an empty line after
    ``min(1 s, timeout / 2)``: a line-based server such as HTTP waits for
    the end of a line that a binary heartbeat never brings). Anything but a NexusKit
    answer is critical. A plain port that closes or stays silent is tried
    once more with a TLS handshake, and one that completes it speaks ``tls``;
    with ``--tls``, a port that fails the handshake is tried in plain, and
    one that answers a plain heartbeat is named (``protocol.plain_not_tls``).

    Example::

        >>> from nexus_green.testing import scripted_peer
        >>> with scripted_peer(lambda s: s.sendall(b"HTTP/1.1 400 Bad Request\\r\\n\\r\\n")) as peer:
        ...     r = check_protocol(Target(host=peer.host, port=peer.port), timeout=2)
        >>> r.data["speaks"], r.findings[0].code
        ('http', 'protocol.http')
    """
    t0 = time.perf_counter()
    findings: list[Finding] = []
    out = _probe(target, timeout, target.tls)
    data: dict[str, Any] = {"tls": target.tls}
    if target.tls and out["speaks"] == "unreachable" and isinstance(out.get("exception"), TLSError):
        plain = _probe(target, timeout, False)
        if plain["speaks"] == "nexuskit":
            findings.append(
                Finding(
                    check="protocol",
                    code="protocol.plain_not_tls",
                    severity="critical",
                    message=f"{target.label} fails the TLS handshake but answers NexusKit in plain TCP",
                    recommendation="connect with tcp:// (no --tls), or enable TLS on the server",
                )
            )
            out, data["tls"] = plain, False
    elif not target.tls and out["speaks"] in ("closed", "nothing"):
        try:
            open_link(target, timeout, tls=True).close()
        except NexusError:
            pass
        else:
            out["speaks"] = "tls"
            out["error"] = "the peer completed a TLS handshake"
    exc = out.pop("exception", None)
    data.update(out)
    speaks = out["speaks"]
    if speaks == "unreachable":
        findings.append(connect_failure("protocol", exc or ConnectionError(out["error"]), target.label))
    elif speaks in _SPEAKS:
        code, rec = _SPEAKS[speaks]
        shown = f" (first bytes: {out['first_bytes']})" if out["first_bytes"] else ""
        findings.append(
            Finding(
                check="protocol",
                code=code,
                severity="critical",
                message=f"{target.label} does not speak NexusKit: it {_WHAT[speaks]}{shown}",
                recommendation=rec,
            )
        )
    elif out["heartbeat_rtt_ms"] is None and not findings:
        findings.append(
            Finding(
                check="protocol",
                code="protocol.no_heartbeat_answer",
                severity="warning",
                message=f"{target.label} sends NexusKit frames but did not answer a heartbeat within {timeout:g} s",
                recommendation="enable heartbeat answers on the server: clients declare a silent peer dead",
            )
        )
    return CheckResult(
        name="protocol",
        status=status_of(findings),
        duration_ms=_ms(time.perf_counter() - t0),
        data=data,
        findings=tuple(findings),
    )


_WHAT = {
    "http": "answers in HTTP",
    "tls": "speaks TLS on a port used without TLS",
    "garbage": "sends bytes that are not NexusKit frames",
    "nothing": "sends nothing back",
    "closed": "closes the connection without answering",
}


# ---------------------------------------------------------------------------- a live client
def _breakers(client: Any, extra: Iterable[Any]) -> list[tuple[str, str]]:
    found: list[Any] = list(extra)
    mws = getattr(client, "middlewares", ()) or ()
    mws = getattr(mws, "middlewares", mws)
    for mw in mws:
        for obj in (mw, getattr(mw, "breaker", None)):
            if obj is not None and hasattr(obj, "current_state") and obj not in found:
                found.append(obj)
    out = []
    for i, b in enumerate(found):
        name = getattr(b, "name", None) or f"breaker-{i}"
        out.append((str(name), str(b.current_state)))
    return out


def check_client(client: Any, *, breakers: Iterable[Any] = ()) -> CheckResult:
    """The state of a live Client (or a ConnectionPool): pool figures, each connection's state, breakers.

    Reads only public, observable things: ``pool.stats()`` and ``repr(pool)``,
    each connection's ``state``, ``in_flight``, traffic counters, late
    answers and heartbeat figures (its last round trip), and the
    ``current_state`` of every circuit breaker among the client's middlewares
    (plus ``breakers``). Findings: a closed client (critical), no connected
    link while the pool keeps failing (critical), refused checkouts or
    waiters (warning), a breaker open (critical) or half-open (warning).

    Example::

        >>> from nexus_green import Client
        >>> from nexus_green.testing import EmbeddedServer
        >>> with EmbeddedServer() as server, Client(server.url) as c:
        ...     _ = c.request(b"x", fid=1)
        ...     r = check_client(c)
        >>> r.status, r.data["pool"]["connected"], r.data["connections"][0]["state"]
        ('ok', 1, 'connected')
    """
    t0 = time.perf_counter()
    pool = getattr(client, "pool", client)
    findings: list[Finding] = []
    stats = dict(client.stats() if hasattr(client, "stats") else pool.stats())
    conns = []
    for conn in pool.connections:
        conns.append(
            {
                "id": conn.conn_id,
                "state": conn.state,
                "in_flight": conn.in_flight,
                "bytes_sent": conn.bytes_sent,
                "bytes_received": conn.bytes_received,
                "responses": conn.responses,
                "late_responses": conn.late_responses,
                "heartbeats_sent": conn.heartbeat.heartbeats_sent,
                "heartbeat_rtt_ms": None if conn.heartbeat.last_rtt is None else _ms(conn.heartbeat.last_rtt),
            }
        )
    closed = bool(getattr(client, "closed", False))
    states = _breakers(client, breakers)
    data = {
        "endpoint": str(stats.get("endpoint", "")),
        "repr": repr(pool),
        "closed": closed,
        "pool": stats,
        "connections": conns,
        "breakers": [{"name": n, "state": s} for n, s in states],
    }

    def add(code: str, severity: Severity, message: str, recommendation: str) -> None:
        findings.append(
            Finding(check="client", code=code, severity=severity, message=message, recommendation=recommendation)
        )

    if closed:
        add("client.closed", "critical", "the client is closed: every request fails", "make a new Client")
    elif stats.get("failing", 0) and not stats.get("connected", 0):
        add(
            "client.not_connected",
            "critical",
            f"no connection is up and the last {stats['failing']} connect attempt(s) failed ({data['repr']})",
            "run nexus-green diagnose against the endpoint to see why connects fail",
        )
    if stats.get("exhausted", 0):
        add(
            "client.pool_exhausted",
            "warning",
            f"the pool refused {stats['exhausted']} checkout(s): every link was at max_in_flight",
            "raise max_size or max_in_flight, or lower the concurrency",
        )
    if stats.get("waiters", 0):
        add(
            "client.waiters",
            "warning",
            f"{stats['waiters']} caller(s) wait for a connection",
            "raise max_size, or find what holds the connections",
        )
    for name, state in states:
        if state == "open":
            add(
                "client.breaker_open",
                "critical",
                f"circuit breaker {name} is open: calls are refused without being sent",
                "fix the failing dependency; the breaker closes after its reset timeout and a good trial call",
            )
        elif state == "half-open":
            add(
                "client.breaker_half_open",
                "warning",
                f"circuit breaker {name} is half-open: trial calls decide whether it closes",
                "watch the next calls; if they fail, the breaker opens again",
            )
    return CheckResult(
        name="client",
        status=status_of(findings),
        duration_ms=_ms(time.perf_counter() - t0),
        data=data,
        findings=tuple(findings),
    )
