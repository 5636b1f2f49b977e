"""Network diagnostics: local interfaces, latency/jitter/loss from heartbeats, bandwidth through an echo function, route MTU.

* :func:`list_interfaces` / :func:`check_interfaces` -- the host's network
  interfaces (``socket.if_nameindex``), each with its IPv4 address, MTU and
  flags from ``ioctl`` (Linux ``SIOCGIF*``) and its IPv6 addresses from
  ``/proc/net/if_inet6``; stdlib only.
* :func:`check_latency` -- a burst of ``count`` heartbeat round trips,
  ``interval`` seconds apart, on one raw link: latency (min, average, p50,
  p95, max), jitter (the mean difference between consecutive round trips,
  as RFC 3550 does), and loss (a probe that got no answer within its
  ``probe_timeout``; a late answer is matched to its own probe, never to the
  next one: TCP keeps the order).
* :func:`check_bandwidth` -- timed echo requests through a Client
  (``echo_fid``: a function that returns the body it gets, such as the
  embedded server's ``FID_ECHO``); skipped, with the reason, without one.
* :func:`check_route` -- the path MTU towards the endpoint (the proxy when
  there is one) from the kernel's route cache: a UDP socket connected to the
  address (``connect`` on UDP sends nothing) with ``IP_MTU_DISCOVER`` set
  and ``IP_MTU`` read; Linux only, skipped with the reason elsewhere. It
  also names the local address and interface that the route uses.

Example::

    >>> from nexus_green.testing import EmbeddedServer
    >>> with EmbeddedServer() as server:
    ...     r = check_latency(Target(host=server.host, port=server.port), count=5, interval=0.0)
    >>> r.status, r.data["sent"], r.data["received"], r.data["loss_pct"]
    ('ok', 5, 5, 0.0)
"""

from __future__ import annotations

import math
import os
import socket as _stdsocket
import struct
import sys
import time
from typing import Any, Optional

import gevent
from gevent import socket as gsocket

from ..errors import NexusError, ProtocolError
from ..protocol.frames import FrameDecoder, heartbeat_frame
from .connection import _ms, connect_failure
from .results import CheckResult, Finding, status_of
from .target import Target, open_link

__all__ = [
    "check_bandwidth",
    "check_interfaces",
    "check_latency",
    "check_route",
    "list_interfaces",
    "percentile",
]

_SIOCGIFFLAGS = 0x8913
_SIOCGIFADDR = 0x8915
_SIOCGIFMTU = 0x8921
_IFF_UP = 0x1
_IFF_LOOPBACK = 0x8
# Linux values, for Pythons whose socket module does not name them.
_IP_MTU_DISCOVER = getattr(_stdsocket, "IP_MTU_DISCOVER", 10)
_IP_PMTUDISC_DO = getattr(_stdsocket, "IP_PMTUDISC_DO", 2)
_IP_MTU = getattr(_stdsocket, "IP_MTU", 14)
_IPV6_MTU_DISCOVER = getattr(_stdsocket, "IPV6_MTU_DISCOVER", 23)
_IPV6_PMTUDISC_DO = getattr(_stdsocket, "IPV6_PMTUDISC_DO", 2)
_IPV6_MTU = getattr(_stdsocket, "IPV6_MTU", 24)


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values``, nearest rank; 0.0 for none.

    Example::

        >>> percentile([4.0, 1.0, 3.0, 2.0], 0.95), percentile([], 0.5)
        (4.0, 0.0)
    """
    if not values:
        return 0.0
    ordered = sorted(values)
    idx = max(0, min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1))
    return ordered[idx]


# ---------------------------------------------------------------------------- interfaces
def _ioctl(sock: Any, request: int, name: str) -> Optional[bytes]:
    import fcntl

    try:
        return fcntl.ioctl(sock.fileno(), request, struct.pack("256s", name.encode()[:15]))
    except OSError:
        return None


def _ipv6_addresses() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    try:
        with open("/proc/net/if_inet6") as f:
            lines = f.read().splitlines()
    except OSError:
        return out
    for line in lines:
        parts = line.split()
        if len(parts) >= 6:
            raw = bytes.fromhex(parts[0])
            out.setdefault(parts[5], []).append(_stdsocket.inet_ntop(_stdsocket.AF_INET6, raw))
    return out


def list_interfaces() -> list[dict[str, Any]]:
    """Every network interface: ``name``, ``index``, ``up``, ``loopback``, ``mtu``, ``ipv4`` and ``ipv6`` addresses.

    Flags, MTU and the IPv4 address come from ``ioctl`` where the platform
    has the Linux requests (None otherwise).

    Example::

        >>> lo = [i for i in list_interfaces() if i["loopback"]]
        >>> sys.platform != "linux" or lo[0]["ipv4"] == ["127.0.0.1"]
        True
    """
    v6 = _ipv6_addresses()
    out = []
    probe = _stdsocket.socket(_stdsocket.AF_INET, _stdsocket.SOCK_DGRAM)
    try:
        for index, name in _stdsocket.if_nameindex():
            entry: dict[str, Any] = {"name": name, "index": index, "up": None, "loopback": None, "mtu": None}
            flags = _ioctl(probe, _SIOCGIFFLAGS, name) if sys.platform == "linux" else None
            if flags is not None:
                value = struct.unpack_from("H", flags, 16)[0]
                entry["up"] = bool(value & _IFF_UP)
                entry["loopback"] = bool(value & _IFF_LOOPBACK)
            mtu = _ioctl(probe, _SIOCGIFMTU, name) if sys.platform == "linux" else None
            if mtu is not None:
                entry["mtu"] = struct.unpack_from("i", mtu, 16)[0]
            addr = _ioctl(probe, _SIOCGIFADDR, name) if sys.platform == "linux" else None
            entry["ipv4"] = [_stdsocket.inet_ntoa(addr[20:24])] if addr is not None else []
            entry["ipv6"] = v6.get(name, [])
            out.append(entry)
    finally:
        probe.close()
    return out


def check_interfaces() -> CheckResult:
    """The local interfaces (see :func:`list_interfaces`); a warning when no interface but loopback is up.

    ``data``: ``interfaces``, ``up`` (names of the interfaces that are up).

    Example::

        >>> r = check_interfaces()
        >>> r.name, isinstance(r.data["interfaces"], list)
        ('interfaces', True)
    """
    t0 = time.perf_counter()
    ifaces = list_interfaces()
    up = [i["name"] for i in ifaces if i["up"]]
    findings = []
    if ifaces and not any(i["up"] and not i["loopback"] and (i["ipv4"] or i["ipv6"]) for i in ifaces):
        findings.append(
            Finding(
                check="interfaces",
                code="interfaces.loopback_only",
                severity="warning" if any(i["up"] is not None for i in ifaces) else "info",
                message="no interface but loopback is up with an address: only local endpoints are reachable",
                recommendation="bring a network interface up (ip link / ip addr) if the endpoint is remote",
            )
        )
    return CheckResult(
        name="interfaces",
        status=status_of(findings),
        duration_ms=_ms(time.perf_counter() - t0),
        data={"interfaces": ifaces, "up": up},
        findings=tuple(findings),
    )


# ---------------------------------------------------------------------------- latency
def check_latency(
    target: Target,
    *,
    count: int = 20,
    interval: float = 0.05,
    probe_timeout: float = 1.0,
    timeout: float = 5.0,
    budget: Optional[float] = None,
) -> CheckResult:
    """Latency, jitter and loss from ``count`` heartbeat round trips ``interval`` seconds apart on one raw link.

    ``probe_timeout`` is how long one heartbeat may wait for its answer
    before it counts as lost; ``timeout`` bounds the connect; ``budget``
    (default: enough for every probe to time out) bounds the whole burst:
    probes not sent by then are not counted.

    ``data``: ``sent``, ``received``, ``lost``, ``loss_pct``, ``min_ms``,
    ``avg_ms``, ``p50_ms``, ``p95_ms``, ``max_ms``, ``jitter_ms``,
    ``rtts_ms`` (each probe's, None for a lost one). The report's rules judge
    these figures (loss above 1 %, p95 above its threshold); this check
    fails only when nothing answered.

    Example::

        >>> from nexus_green.testing import silent_peer
        >>> with silent_peer() as peer:
        ...     r = check_latency(Target(host=peer.host, port=peer.port), count=2, interval=0, probe_timeout=0.05)
        >>> r.status, r.data["loss_pct"], r.findings[0].code
        ('failed', 100.0, 'latency.no_answer')
    """
    if count < 1:
        raise ValueError(f"count must be at least 1, not {count!r}")
    if interval < 0 or probe_timeout <= 0:
        raise ValueError("interval must be >= 0 and probe_timeout > 0 seconds")
    t0 = time.perf_counter()
    limit = budget if budget is not None else count * (interval + probe_timeout) + timeout
    end = time.monotonic() + limit
    findings: list[Finding] = []
    rtts: list[Optional[float]] = []
    try:
        sock = open_link(target, timeout)
    except NexusError as exc:
        findings.append(connect_failure("latency", exc, target.label))
        return CheckResult(
            name="latency",
            status="failed",
            duration_ms=_ms(time.perf_counter() - t0),
            data=_latency_data([]),
            findings=tuple(findings),
        )
    decoder = FrameDecoder()
    late = 0  # answers still due to probes already counted as lost
    broken = ""
    ping = heartbeat_frame()
    try:
        for i in range(count):
            if time.monotonic() >= end:
                break
            if i and interval:
                gevent.sleep(interval)
            sent = time.perf_counter()
            sock.sendall(ping)
            due = time.monotonic() + probe_timeout
            answered = False
            while not answered:
                left = min(due, end) - time.monotonic()
                if left <= 0:
                    break
                sock.settimeout(left)
                try:
                    chunk = sock.recv(4096)
                except TimeoutError:
                    break
                if not chunk:
                    broken = "the peer closed the connection"
                    break
                for f in decoder.feed(chunk):
                    if not (f.is_heartbeat and f.is_response):
                        continue  # a push or a stray frame: not our answer
                    if late:
                        late -= 1
                        continue
                    rtts.append(time.perf_counter() - sent)
                    answered = True
            if not answered:
                rtts.append(None)
                late += 1
            if broken:
                break
    except ProtocolError as exc:
        broken = f"the peer broke the NexusKit framing: {exc}"
    except OSError as exc:
        broken = f"the link failed: {exc}"
    finally:
        sock.close()
    data = _latency_data(rtts)
    if broken:
        findings.append(
            Finding(
                check="latency",
                code="latency.link_failed",
                severity="critical",
                message=f"heartbeat burst to {target.label} stopped after {len(rtts)} probe(s): {broken}",
                recommendation="see the protocol check: the peer may not speak NexusKit",
            )
        )
    elif data["sent"] and not data["received"]:
        findings.append(
            Finding(
                check="latency",
                code="latency.no_answer",
                severity="critical",
                message=f"none of {data['sent']} heartbeats to {target.label} was answered within {probe_timeout:g} s",
                recommendation="the peer does not answer heartbeats: clients will declare it dead",
            )
        )
    return CheckResult(
        name="latency",
        status=status_of(findings),
        duration_ms=_ms(time.perf_counter() - t0),
        data=data,
        findings=tuple(findings),
    )


def _latency_data(rtts: list[Optional[float]]) -> dict[str, Any]:
    got = [r * 1000.0 for r in rtts if r is not None]
    jitter = sum(abs(b - a) for a, b in zip(got[:-1], got[1:], strict=True)) / (len(got) - 1) if len(got) > 1 else 0.0
    sent = len(rtts)
    return {
        "sent": sent,
        "received": len(got),
        "lost": sent - len(got),
        "loss_pct": round(100.0 * (sent - len(got)) / sent, 3) if sent else 0.0,
        "min_ms": round(min(got), 3) if got else None,
        "avg_ms": round(sum(got) / len(got), 3) if got else None,
        "p50_ms": round(percentile(got, 0.5), 3) if got else None,
        "p95_ms": round(percentile(got, 0.95), 3) if got else None,
        "max_ms": round(max(got), 3) if got else None,
        "jitter_ms": round(jitter, 3),
        "rtts_ms": [None if r is None else round(r * 1000.0, 3) for r in rtts],
    }


# ---------------------------------------------------------------------------- bandwidth
def check_bandwidth(
    target: Target,
    *,
    echo_fid: Optional[int] = None,
    size: int = 256 * 1024,
    transfers: int = 8,
    timeout: float = 10.0,
    client_options: Optional[dict[str, Any]] = None,
) -> CheckResult:
    """Bandwidth from ``transfers`` timed echo requests of ``size`` bytes through a Client, one at a time.

    ``bandwidth_mbps`` is the payload carried each way (``size`` ×
    transfers done, in megabits) over the time the transfers took, round
    trips included: a conservative figure (the link carried twice that,
    half each way). Without ``echo_fid`` the check is skipped: a bandwidth
    test needs a function that sends back what it receives. ``timeout``
    bounds the whole check; a wrong echo (another body came back) is
    critical.

    ``data``: ``echo_fid``, ``size``, ``transfers`` (done), ``bytes_each_way``,
    ``seconds``, ``bandwidth_mbps``.

    Example::

        >>> check_bandwidth(Target(host="127.0.0.1", port=1)).skipped_reason
        'no echo function: pass echo_fid (--echo-fid), a function that returns the body it receives'
    """
    if echo_fid is None:
        return CheckResult(
            name="bandwidth",
            status="skipped",
            skipped_reason="no echo function: pass echo_fid (--echo-fid), a function that returns the body it receives",
        )
    from ..client import Client

    t0 = time.perf_counter()
    end = time.monotonic() + timeout
    payload = os.urandom(size)
    done = 0
    findings: list[Finding] = []
    seconds = 0.0
    try:
        with Client(target.url, **measuring_options(target, timeout, client_options)) as client:
            client.connect(timeout=timeout)
            client.request(payload[:64], fid=echo_fid, timeout=max(0.001, end - time.monotonic()))  # warm up
            s0 = time.perf_counter()
            for _ in range(transfers):
                left = end - time.monotonic()
                if left <= 0:
                    break
                r = client.request(payload, fid=echo_fid, timeout=left)
                if r.body != payload:
                    findings.append(
                        Finding(
                            check="bandwidth",
                            code="bandwidth.not_an_echo",
                            severity="critical",
                            message=f"function {echo_fid} answered {len(r.body)} bytes that are not the {size} sent",
                            recommendation="pass --echo-fid the id of a function that returns its request body",
                        )
                    )
                    break
                done += 1
            seconds = time.perf_counter() - s0
    except NexusError as exc:
        findings.append(
            Finding(
                check="bandwidth",
                code="bandwidth.failed",
                severity="critical" if not done else "warning",
                message=f"echo transfers through function {echo_fid} failed after {done}: {exc}",
                recommendation="check that the echo function exists and answers within the timeout",
            )
        )
    mbps = round(done * size * 8 / seconds / 1e6, 3) if done and seconds > 0 else None
    data = {
        "echo_fid": echo_fid,
        "size": size,
        "transfers": done,
        "bytes_each_way": done * size,
        "seconds": round(seconds, 6),
        "bandwidth_mbps": mbps,
    }
    return CheckResult(
        name="bandwidth",
        status=status_of(findings),
        duration_ms=_ms(time.perf_counter() - t0),
        data=data,
        findings=tuple(findings),
    )


def measuring_options(target: Target, timeout: float, extra: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """Client options for the measuring checks: the target's proxy, unverified TLS (the TLS check judges), no retries.

    Example::

        >>> sorted(measuring_options(Target(host="h", port=1), 2.0))
        ['connect_timeout', 'reconnect', 'timeout']
    """
    opts: dict[str, Any] = {"timeout": timeout, "connect_timeout": timeout, "reconnect": False}
    if target.proxy is not None:
        opts["proxy"] = target.proxy
    if target.tls:
        from ..transport.tls import TLSConfig

        opts["tls"] = TLSConfig(verify=False, check_hostname=False, server_hostname=target.server_hostname)
    opts.update(extra or {})
    return opts


# ---------------------------------------------------------------------------- route
def _interface_of(address: str) -> Optional[str]:
    for iface in list_interfaces():
        if address in iface["ipv4"] or address.split("%")[0] in iface["ipv6"]:
            return str(iface["name"])
    return None


def _route_socket(family: int) -> Any:
    return _stdsocket.socket(family, _stdsocket.SOCK_DGRAM)


def check_route(target: Target, *, timeout: float = 5.0) -> CheckResult:
    """The path MTU towards the host the client dials, and the local address and interface the route uses.

    Linux only (``IP_MTU`` / ``IPV6_MTU`` on a connected UDP socket: the
    kernel's route MTU, lowered by any ICMP "fragmentation needed" it has
    seen); skipped with the reason elsewhere. An MTU under 1280 (the IPv6
    minimum) is a warning: large frames will be fragmented or black-holed.

    ``data``: ``dialled``, ``address``, ``family``, ``path_mtu``,
    ``local_address``, ``interface``.

    Example::

        >>> r = check_route(Target(host="127.0.0.1", port=7600))
        >>> r.status == "skipped" or (r.data["local_address"], r.data["interface"] is not None)
        ('127.0.0.1', True)
    """
    if not sys.platform.startswith("linux"):
        return CheckResult(
            name="route",
            status="skipped",
            skipped_reason=f"path MTU discovery (IP_MTU) is Linux-only; this is {sys.platform}",
        )
    t0 = time.perf_counter()
    proxy = target.proxy_config
    host, port = (target.host, target.port) if proxy is None else (proxy.host, proxy.port)
    data: dict[str, Any] = {"dialled": f"{host}:{port}"}
    findings: list[Finding] = []
    try:
        from .connection import _Timeout

        with _Timeout(timeout):
            infos = gsocket.getaddrinfo(host, port, 0, _stdsocket.SOCK_DGRAM)
    except (OSError, UnicodeError) as exc:  # TimeoutError is an OSError
        return CheckResult(
            name="route",
            status="skipped",
            duration_ms=_ms(time.perf_counter() - t0),
            skipped_reason=f"{host} does not resolve ({exc}): no route to check",
        )
    family, _, _, _, addr = infos[0]
    v6 = family == _stdsocket.AF_INET6
    sock = _route_socket(family)
    try:
        if v6:
            sock.setsockopt(_stdsocket.IPPROTO_IPV6, _IPV6_MTU_DISCOVER, _IPV6_PMTUDISC_DO)
        else:
            sock.setsockopt(_stdsocket.IPPROTO_IP, _IP_MTU_DISCOVER, _IP_PMTUDISC_DO)
        sock.connect(addr)  # UDP: picks the route, sends nothing
        mtu = (
            sock.getsockopt(_stdsocket.IPPROTO_IPV6, _IPV6_MTU)
            if v6
            else sock.getsockopt(_stdsocket.IPPROTO_IP, _IP_MTU)
        )
        local = str(sock.getsockname()[0])
    except OSError as exc:
        findings.append(
            Finding(
                check="route",
                code="route.no_route",
                severity="critical",
                message=f"the kernel has no route to {addr[0]}: {exc}",
                recommendation="check the routing table (ip route) and the default gateway",
            )
        )
        mtu, local = None, None
    finally:
        sock.close()
    data.update(
        {
            "address": str(addr[0]),
            "family": "ipv6" if v6 else "ipv4",
            "path_mtu": mtu,
            "local_address": local,
            "interface": _interface_of(local) if local else None,
        }
    )
    if mtu is not None and mtu < 1280:
        findings.append(
            Finding(
                check="route",
                code="route.small_mtu",
                severity="warning",
                message=f"the path MTU to {addr[0]} is {mtu} bytes",
                recommendation="large frames are fragmented on this path: check tunnels/VPNs and their MTU settings",
            )
        )
    return CheckResult(
        name="route",
        status=status_of(findings),
        duration_ms=_ms(time.perf_counter() - t0),
        data=data,
        findings=tuple(findings),
    )
