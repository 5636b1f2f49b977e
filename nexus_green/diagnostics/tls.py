"""TLS diagnostics: :func:`check_tls` names every problem of a TLS endpoint at once (issue 19).

OpenSSL stops at the first verification error, so a certificate that is
self-signed, expired and issued for another host shows up as "self-signed"
and nothing else. This check does not rely on OpenSSL's verdict alone:

1. **Look** -- one handshake with verification off (TLS 1.2 or newer, the
   client certificate if one is given). The handshake runs over memory BIOs
   on a ``gevent.socket``, so the check sees the raw bytes the peer sent (a
   peer that answers the ClientHello with HTTP, NexusKit frames or garbage is
   named as such), and a message callback records the server's Certificate
   message (the certificates, even when the handshake then fails), whether it
   asked for a client certificate (CertificateRequest), and its alerts. After
   the handshake a short read catches the alert by which a TLS 1.3 server
   refuses a missing or unacceptable client certificate (it judges the client
   only after the client finished its handshake). A server that refuses the
   protocol version is tried again with TLS 1.0 and 1.1 allowed, to say which
   old version it speaks.
2. **Analyse** the leaf certificate with ``cryptography``: validity dates and
   days to expiry, self-signed (issuer equals subject and its own key verifies
   its signature), the host name against the SAN (DNS and IP entries, RFC 6125
   wildcards: ``*`` as the whole left-most label, matching one label), with
   the subject CN used only as a flagged fallback when there is no SAN, and
   the pins.
3. **Verify** -- a second handshake with verification on (the default trust
   store, or ``cafile``) and host name checking off, so the chain's verdict
   (``ssl.SSLCertVerificationError.verify_code`` / ``verify_message``) is
   separate from the host name's.

Each connection (TCP connect, SOCKS5 tunnel and handshake together) is
bounded by ``timeout`` with one ``gevent.Timeout``; the post-handshake read
waits at most :data:`PROBE_WAIT` seconds and stops early when the server's
session tickets show it accepted the client.

Finding codes (severity):

=============================  ========  ================================================
code                           severity  when
=============================  ========  ================================================
``tls.unreachable``            critical  no TCP connection (refused, DNS, timeout, proxy)
``tls.not_tls``                critical  the peer answered with something else than TLS
``tls.handshake_timeout``      critical  connected, but no TLS handshake within timeout
``tls.handshake_failed``       critical  alert or close during the handshake
``tls.untrusted_chain``        critical  the chain does not lead to a trusted CA
``tls.chain_invalid``          critical  the chain failed verification otherwise
``tls.self_signed``            warning   self-signed (info when the CA file trusts it)
``tls.expired``                critical  past ``not_after``
``tls.not_yet_valid``          critical  before ``not_before``
``tls.expires_soon``           warning   fewer than :data:`EXPIRY_WARNING_DAYS` days left
``tls.hostname_mismatch``      critical  the name matches neither SAN nor (without SAN) CN
``tls.cn_only_no_san``         critical  no SAN: Python's ssl (and nexus_green) refuse it
``tls.weak_protocol``          critical  the server speaks only TLS 1.1 or older
``tls.client_cert_required``   warning   the server requires a client certificate, none given
``tls.client_cert_rejected``   critical  the server refused the given client certificate
``tls.pin_mismatch``           critical  no pin matches the certificate
``tls.bad_certificate``        critical  the certificate cannot be parsed
=============================  ========  ================================================

Example (a server whose certificate expired, checked against its test CA)::

    >>> import datetime
    >>> from nexus_green.testing.tls import TLSEchoServer, make_test_certificates
    >>> with make_test_certificates() as kit:
    ...     past = datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc)
    ...     cert, key, _ = kit.issue_server_cert("localhost", name="old", not_after=past)
    ...     with TLSEchoServer(kit.server_context(cert_file=cert, key_file=key)) as server:
    ...         result = check_tls(*server.address, server_hostname="localhost", cafile=kit.ca_file)
    >>> result.status, [f.code for f in result.findings], result.data["chain_verified"]
    ('failed', ['tls.expired'], False)
    >>> result.data["verify_message"], result.data["hostname_ok"]
    ('certificate has expired', True)
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import ipaddress
import math
import ssl
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

import gevent
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import NameOID
from gevent import socket as gsocket

from ..errors import ConnectTimeout, NexusError, RemoteProtocolError
from ..protocol.frames import FrameDecoder, heartbeat_frame
from ..transport.socks5 import ProxyConfig, open_tunnel, parse_proxy_url
from ..transport.stream import map_os_error
from ..transport.tls import parse_pin, rejection_error, spki_pin
from .results import CheckResult, Finding, Severity, status_of

__all__ = ["check_tls", "match_hostname", "EXPIRY_WARNING_DAYS", "PROBE_WAIT", "FINDING_CODES"]

EXPIRY_WARNING_DAYS = 14
PROBE_WAIT = 1.0  # seconds the post-handshake read waits for a client-certificate alert
_CHECK = "tls"
# Every code check_tls can report, with its severity (self_signed is "info" when the chain is trusted).
FINDING_CODES: dict[str, str] = {
    "tls.unreachable": "critical",
    "tls.not_tls": "critical",
    "tls.handshake_timeout": "critical",
    "tls.handshake_failed": "critical",
    "tls.untrusted_chain": "critical",
    "tls.chain_invalid": "critical",
    "tls.self_signed": "warning",
    "tls.expired": "critical",
    "tls.not_yet_valid": "critical",
    "tls.expires_soon": "warning",
    "tls.hostname_mismatch": "critical",
    "tls.cn_only_no_san": "critical",
    "tls.weak_protocol": "critical",
    "tls.client_cert_required": "warning",
    "tls.client_cert_rejected": "critical",
    "tls.pin_mismatch": "critical",
    "tls.bad_certificate": "critical",
}
_FIRST_BYTES = 64  # raw bytes of the peer kept to name a protocol that is not TLS

# TLS handshake message types and content types (RFC 8446 / 5246), as the message callback reports them.
_HANDSHAKE, _ALERT = 22, 21
_MSG_SERVER_HELLO, _MSG_CERTIFICATE, _MSG_CERTIFICATE_REQUEST, _MSG_NEW_SESSION_TICKET = 2, 11, 13, 4
_TLS13 = 0x0304
_WIRE_VERSIONS = {0x0301: "TLSv1", 0x0302: "TLSv1.1", 0x0303: "TLSv1.2", 0x0304: "TLSv1.3"}
# OpenSSL X509_V_ERR_* codes: the chain does not lead to a trusted root.
_UNTRUSTED_CODES = frozenset({2, 18, 19, 20, 21, 24, 27, 28})
_DATE_CODES = frozenset({9, 10})  # CERT_NOT_YET_VALID, CERT_HAS_EXPIRED: analysed from the dates
# A server that refuses our protocol versions (retried with TLS 1.0/1.1 allowed).
_VERSION_REASONS = frozenset(
    {"TLSV1_ALERT_PROTOCOL_VERSION", "UNSUPPORTED_PROTOCOL", "WRONG_SSL_VERSION", "NO_PROTOCOLS_AVAILABLE"}
)
_PROTOCOL_ORDER = {"SSLv3": 0, "TLSv1": 1, "TLSv1.1": 2, "TLSv1.2": 3, "TLSv1.3": 4}
# The message callback is set on the C context: ssl.SSLContext's setter (gevent's too, after patch_all())
# wraps it for SSLSocket owners, and a memory-BIO handshake has none.
_MSG_CALLBACK = getattr(getattr(ssl, "_ssl", None), "_SSLContext", None)
_MSG_CALLBACK = getattr(_MSG_CALLBACK, "_msg_callback", None)


# ---------------------------------------------------------------------------------------------- arguments
@dataclass(frozen=True, slots=True)
class _Pin:
    text: str
    kind: str  # "spki" or "cert"
    digest: bytes


def _parse_pins(pins: Sequence[str]) -> tuple[_Pin, ...]:
    if isinstance(pins, (str, bytes)):
        raise ValueError("pins must be a sequence of pins, not one string: write pins=[pin]")
    parsed = []
    for pin in pins:
        if not isinstance(pin, str):
            raise ValueError(f"a pin must be a string, not {type(pin).__name__}")
        if pin.startswith(("sha256/", "sha256-cert/")):
            kind, digest = parse_pin(pin)  # a ConfigurationError (a ValueError) names what is wrong
        else:
            hexed = pin.replace(":", "").strip()
            try:
                digest = bytes.fromhex(hexed) if len(hexed) == 64 else b""
            except ValueError:
                digest = b""
            if len(digest) != 32:
                raise ValueError(
                    f"pin {pin!r} is neither 'sha256/<base64 of the SHA-256 of the public key (SPKI)>' "
                    "nor the SHA-256 of the DER certificate in hex (64 hex digits, colons allowed)"
                )
            kind = "cert"
        parsed.append(_Pin(pin, kind, digest))
    return tuple(parsed)


def _check_arguments(
    host: Any, port: Any, timeout: Any, server_hostname: Any, client_cert: Any, client_key: Any
) -> str:
    if not isinstance(host, str) or not host.strip("[] "):
        raise ValueError(f"host must be a host name or an IP address, not {host!r}")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise ValueError(f"port must be an integer from 1 to 65535, not {port!r}")
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not math.isfinite(timeout) or timeout <= 0:
        raise ValueError(f"timeout must be a positive number of seconds, not {timeout!r}")
    name = host if server_hostname is None else server_hostname
    if isinstance(name, str):
        name = name.strip("[]")
    if not isinstance(name, str) or not name or name.startswith(".") or any(c.isspace() for c in name):
        raise ValueError(f"server_hostname must be a host name or an IP address, not {name!r}")
    try:
        name.encode("idna")  # what the ssl module does with it before SNI: refuse here, before any I/O
    except UnicodeError as e:
        raise ValueError(f"server_hostname {name!r} is not a valid host name: {e}") from None
    if client_key is not None and client_cert is None:
        raise ValueError("client_key needs client_cert (the client certificate)")
    return name


def _context(
    *, verify: bool, cafile: Optional[str], client_cert: Optional[str], client_key: Optional[str], legacy: bool
) -> ssl.SSLContext:
    """A client context for memory-BIO handshakes (the socket under them is gevent's)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False  # the host name is judged from the certificate, separately from the chain
    if verify:
        ctx.verify_mode = ssl.CERT_REQUIRED
        try:
            if cafile is None:
                ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
            else:
                ctx.load_verify_locations(cafile=cafile)
        except (OSError, ssl.SSLError) as e:
            raise ValueError(f"cannot load the CA file {cafile!r}: {e}") from e
    else:
        ctx.verify_mode = ssl.CERT_NONE
    if legacy:
        # Only to name the old version a server insists on; the deprecation warnings are the point of the finding.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            ctx.minimum_version = ssl.TLSVersion.TLSv1
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    if client_cert is not None:
        try:
            ctx.load_cert_chain(client_cert, client_key)
        except (OSError, ssl.SSLError) as e:
            raise ValueError(
                f"cannot load the client certificate {client_cert!r} (key {client_key or 'in the same file'!r}): {e}"
            ) from e
    return ctx


# ---------------------------------------------------------------------------------------------- one handshake
@dataclass(slots=True)
class _Attempt:
    """What one connection learned; ``phase`` is where it ended."""

    phase: str = "connect"  # connect, proxy, socks5, handshake, probe, done
    error: Optional[BaseException] = None
    timed_out: bool = False
    first_bytes: bytes = b""
    bytes_received: int = 0
    completed: bool = False
    after_hello: bool = False
    version: Optional[str] = None
    wire_version: Optional[str] = None  # from the handshake messages: known even when the handshake fails
    cipher: Optional[tuple[str, str, int]] = None
    leaf: Optional[bytes] = None
    chain: list[bytes] = field(default_factory=list)
    callback: bool = False
    cert_requested: bool = False
    ticket: bool = False
    alerts: list[int] = field(default_factory=list)
    probe_error: Optional[BaseException] = None
    handshake_ms: float = 0.0


def _certificates(data: bytes, tls13: bool) -> list[bytes]:
    """The DER certificates of a Certificate handshake message (its 4-byte header included)."""
    out: list[bytes] = []
    pos = 4
    if tls13:
        pos += 1 + data[4]  # certificate_request_context
    end = pos + 3 + int.from_bytes(data[pos : pos + 3], "big")
    pos += 3
    while pos + 3 <= min(end, len(data)):
        n = int.from_bytes(data[pos : pos + 3], "big")
        der = data[pos + 3 : pos + 3 + n]
        if len(der) != n:
            break
        out.append(bytes(der))
        pos += 3 + n
        if tls13:
            pos += 2 + int.from_bytes(data[pos : pos + 2], "big")  # the entry's extensions
    return out


def _watch(ctx: ssl.SSLContext, att: _Attempt) -> None:
    """Record the server's Certificate, CertificateRequest, tickets and alerts (CPython's message callback)."""
    if _MSG_CALLBACK is None:  # pragma: no cover - CPython 3.8+ has it; without it these fields stay unknown
        return

    def callback(conn: Any, direction: str, version: Any, content_type: Any, msg_type: Any, data: bytes) -> None:
        if direction != "read":
            return
        if content_type == _HANDSHAKE:
            if (
                msg_type != _MSG_SERVER_HELLO
            ):  # a ServerHello carries the legacy version 1.2 field, the rest the real one
                att.wire_version = _WIRE_VERSIONS.get(int(version), att.wire_version)
            if msg_type == _MSG_CERTIFICATE and not att.chain:
                try:
                    att.chain = _certificates(data, int(version) == _TLS13)
                except IndexError:  # pragma: no cover - OpenSSL parsed the message before calling back
                    att.chain = []
            elif msg_type == _MSG_CERTIFICATE_REQUEST:
                att.cert_requested = True
            elif msg_type == _MSG_NEW_SESSION_TICKET:
                att.ticket = True
        elif content_type == _ALERT:
            att.alerts.append(int(msg_type))

    _MSG_CALLBACK.__set__(ctx, callback)
    att.callback = True


def _connect(host: str, port: int, proxy: Optional[ProxyConfig], timeout: float, att: _Attempt) -> Any:
    """A connected gevent socket to ``host:port``, directly or through the SOCKS5 proxy.

    The socket has no timeout of its own (an app's ``setdefaulttimeout`` must
    not cut a step short): the caller's ``gevent.Timeout`` bounds every step.
    """
    if proxy is None:
        return gsocket.create_connection((host, port), timeout=None)
    att.phase = "proxy"
    sock = gsocket.create_connection((proxy.host, proxy.port), timeout=None)
    try:
        att.phase = "socks5"
        open_tunnel(
            sock,
            target_host=host,
            target_port=port,
            username=proxy.username,
            password=proxy.password,
            remote_dns=proxy.remote_dns,
            proxy_label=proxy.label,
            timeout=timeout,
        )
    except BaseException:
        sock.close()
        raise
    return sock


def _pump(sock: Any, incoming: ssl.MemoryBIO, att: _Attempt) -> None:
    data = sock.recv(65536)
    if not data:
        incoming.write_eof()
        return
    if len(att.first_bytes) < _FIRST_BYTES:
        att.first_bytes += data[: _FIRST_BYTES - len(att.first_bytes)]
    att.bytes_received += len(data)
    incoming.write(data)


def _handshake(
    host: str,
    port: int,
    sni: str,
    ctx: ssl.SSLContext,
    proxy: Optional[ProxyConfig],
    timeout: float,
) -> _Attempt:
    """Connect and handshake; never raises for what the peer does (it lands in the returned attempt)."""
    att = _Attempt()
    _watch(ctx, att)
    timer = gevent.Timeout(timeout)
    timer.start()
    sock = None
    try:
        sock = _connect(host, port, proxy, timeout, att)
        att.phase = "handshake"
        t0 = time.perf_counter()
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = ctx.wrap_bio(incoming, outgoing, server_hostname=sni)
        try:
            while True:
                try:
                    tls.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    if outgoing.pending:
                        sock.sendall(outgoing.read())
                    _pump(sock, incoming, att)
        except OSError:
            att.after_hello = tls.cipher() is not None
            att.version, att.cipher = tls.version() or att.wire_version, tls.cipher()
            if outgoing.pending:  # our alert, so the server logs why we left
                try:
                    sock.sendall(outgoing.read())
                except OSError:
                    pass
            raise
        att.handshake_ms = (time.perf_counter() - t0) * 1000.0
        att.completed = att.after_hello = True
        att.version, att.cipher = tls.version(), tls.cipher()
        att.leaf = tls.getpeercert(binary_form=True)
        if outgoing.pending:
            sock.sendall(outgoing.read())  # the client's Finished (and certificate)
        att.phase = "probe"
        _probe(sock, tls, incoming, att, min(PROBE_WAIT, timeout))
        try:
            tls.unwrap()  # close_notify, so the server sees a clean goodbye
        except ssl.SSLError:
            pass  # its close_notify is not there yet: ours is in the buffer all the same
        if outgoing.pending:
            sock.sendall(outgoing.read())
        att.phase = "done"
    except gevent.Timeout as t:
        if t is not timer:
            raise
        att.timed_out = True
    except (OSError, NexusError) as e:
        att.error = e
        att.timed_out = isinstance(e, (TimeoutError, ConnectTimeout))
    finally:
        timer.close()
        if sock is not None:
            sock.close()
    return att


def _probe(sock: Any, tls: ssl.SSLObject, incoming: ssl.MemoryBIO, att: _Attempt, wait: float) -> None:
    """Read briefly after the handshake: a TLS 1.3 server refuses a client certificate here."""
    if att.version != "TLSv1.3":
        return  # TLS 1.2 servers judge the client during the handshake
    timer = gevent.Timeout(wait)
    timer.start()
    try:
        while True:
            try:
                tls.read(1)
                return  # the server spoke first: it accepted us
            except ssl.SSLWantReadError:
                if att.ticket:  # a session ticket means the server accepted our Finished (and certificate)
                    return
                _pump(sock, incoming, att)
    except gevent.Timeout as t:
        if t is not timer:
            raise
    except OSError as e:
        att.probe_error = e
    finally:
        timer.close()


def _speaks_nexuskit(host: str, port: int, proxy: Optional[ProxyConfig], timeout: float) -> bool:
    """True when the peer answers a NexusKit heartbeat in plain TCP (a tcp:// server on the checked port)."""
    att = _Attempt()
    timer = gevent.Timeout(min(timeout, 2.0))
    timer.start()
    sock = None
    try:
        sock = _connect(host, port, proxy, timeout, att)
        sock.sendall(heartbeat_frame())
        decoder = FrameDecoder()
        while True:
            data = sock.recv(4096)
            if not data:
                return False
            for frame in decoder.feed(data):
                if frame.is_heartbeat:
                    return True
    except gevent.Timeout as t:
        if t is not timer:
            raise
        return False
    except (OSError, NexusError, RemoteProtocolError):
        return False
    finally:
        timer.close()
        if sock is not None:
            sock.close()


# ---------------------------------------------------------------------------------------------- analysis
def _looks_like_tls(first: bytes) -> bool:
    """A TLS record starts with a content type (20-24) and major version 3."""
    return first[0] in (20, 21, 22, 23, 24) and (len(first) < 2 or first[1] == 3)


def _name_protocol(first: bytes) -> str:
    if first.startswith(b"HTTP/"):
        status_line = first.split(b"\r\n", 1)[0].decode("latin-1")
        return f"HTTP ({status_line!r})"
    if len(first) >= 6 and first[4:6] == b"\x7a\x5a":
        return "the NexusKit protocol in plain TCP (a NexusKit frame)"
    if first.startswith(b"SSH-"):
        return "SSH"
    if all(32 <= b < 127 or b in (9, 10, 13) for b in first):
        return f"text {first[:40].decode('ascii')!r}"
    return f"binary data that is not TLS ({first[:16].hex(' ')})"


def match_hostname(name: str, dns_names: Sequence[str], ip_addresses: Sequence[str]) -> bool:
    """Whether ``name`` matches a certificate's SAN entries, by RFC 6125.

    An IP address matches only IP entries. A DNS name matches case-insensitively
    (a trailing dot ignored, IDNA names compared in their ``xn--`` form); a
    wildcard is only the whole left-most label of an entry with at least two
    more labels, and stands for exactly one label.

    Example::

        >>> match_hostname("api.example.com", ["*.example.com"], [])
        True
        >>> match_hostname("a.b.example.com", ["*.example.com"], []), match_hostname("example.com", ["*.example.com"], [])
        (False, False)
        >>> match_hostname("::1", ["localhost"], ["0:0::1"]), match_hostname("10.0.0.1", ["10.0.0.1"], [])
        (True, False)
    """
    try:
        ip = ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        ip = None
    if ip is not None:
        for entry in ip_addresses:
            try:
                if ipaddress.ip_address(entry) == ip:
                    return True
            except ValueError:
                continue
        return False
    wanted = _normalise(name)
    if wanted is None:
        return False
    return any(_dns_match(entry, wanted) for entry in dns_names)


def _normalise(name: str) -> Optional[str]:
    name = name.rstrip(".").lower()
    try:
        return name.encode("idna").decode("ascii") if not name.isascii() else name
    except UnicodeError:
        return None


def _dns_match(pattern: str, name: str) -> bool:
    pattern = pattern.rstrip(".").lower()
    if "*" not in pattern:
        return pattern == name
    first, _, rest = pattern.partition(".")
    if first != "*" or "*" in rest or rest.count(".") < 1:
        return False  # partial (f*.example.com), embedded or too broad (*.com) wildcards match nothing
    head, _, tail = name.partition(".")
    return bool(head) and tail == rest


@dataclass(slots=True)
class _Report:
    """Findings and data as they accumulate."""

    findings: list[Finding] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)

    def add(self, code: str, severity: Severity, message: str, recommendation: str = "") -> None:
        self.findings.append(
            Finding(check=_CHECK, code=code, severity=severity, message=message, recommendation=recommendation)
        )


def _iso(when: datetime.datetime) -> str:
    return when.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _is_self_signed(cert: x509.Certificate) -> bool:
    if cert.issuer != cert.subject:
        return False
    try:
        cert.verify_directly_issued_by(cert)
    except (ValueError, TypeError, InvalidSignature):
        return False  # the names agree but its own key does not verify it: issued by a namesake CA
    return True


def _analyse(der: bytes, name: str, where: str, rep: _Report, now: datetime.datetime) -> Optional[x509.Certificate]:
    """Dates, self-signed, host name: every finding of the leaf certificate; None if it cannot be parsed."""
    rep.data["sha256_fingerprint"] = hashlib.sha256(der).hexdigest()
    try:
        cert = x509.load_der_x509_certificate(der)
        rep.data["spki_pin"] = spki_pin(der)
    except ValueError as e:
        rep.add(
            "tls.bad_certificate",
            "critical",
            f"the certificate of {where} cannot be parsed: {e}",
            "replace the server's certificate with a well-formed X.509 certificate",
        )
        return None
    rep.data["subject"] = cert.subject.rfc4514_string()
    rep.data["issuer"] = cert.issuer.rfc4514_string()
    not_before, not_after = cert.not_valid_before_utc, cert.not_valid_after_utc
    rep.data["not_before"], rep.data["not_after"] = _iso(not_before), _iso(not_after)
    days = (not_after - now).total_seconds() / 86400.0
    rep.data["days_to_expiry"] = round(days, 2)
    if now < not_before:
        rep.add(
            "tls.not_yet_valid",
            "critical",
            f"the certificate of {where} is not valid before {_iso(not_before)} "
            f"({(not_before - now).total_seconds() / 86400.0:.1f} days from now)",
            "install a certificate that is valid now, or fix the clock of the server or of this host",
        )
    if days < 0:
        rep.add(
            "tls.expired",
            "critical",
            f"the certificate of {where} expired {-days:.1f} days ago ({_iso(not_after)})",
            "renew the server's certificate",
        )
    elif days < EXPIRY_WARNING_DAYS:
        rep.add(
            "tls.expires_soon",
            "warning",
            f"the certificate of {where} expires in {days:.1f} days ({_iso(not_after)})",
            f"renew the server's certificate before {_iso(not_after)}",
        )
    self_signed = _is_self_signed(cert)
    rep.data["self_signed"] = self_signed
    _check_name(cert, name, where, rep)
    return cert


def _check_name(cert: x509.Certificate, name: str, where: str, rep: _Report) -> None:
    dns: list[str] = []
    ips: list[str] = []
    has_san = True
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns = [str(v) for v in san.get_values_for_type(x509.DNSName)]
        ips = [str(v) for v in san.get_values_for_type(x509.IPAddress)]
    except x509.ExtensionNotFound:
        has_san = False
    rep.data["sans"] = dns + ips
    cns = [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if has_san:
        ok = match_hostname(name, dns, ips)
        rep.data["hostname_matched_by"] = "san" if ok else None
    else:
        # The CN is a fallback RFC 6125 allows only without SAN; Python's ssl no longer uses it at all.
        ok = any(match_hostname(name, [cn], [cn]) for cn in cns)
        rep.data["hostname_matched_by"] = "cn" if ok else None
        shown = ", ".join(repr(c) for c in cns) or "none"
        rep.add(
            "tls.cn_only_no_san",
            "critical",
            f"the certificate of {where} has no subjectAltName, only the common name ({shown}); "
            "Python's ssl, and so nexus_green, ignore the CN and refuse it whatever name it holds",
            f"reissue the certificate with a subjectAltName entry for {name!r}",
        )
    rep.data["hostname_ok"] = ok
    if not ok:
        names = ", ".join(dns + ips) if has_san else ", ".join(f"CN={c}" for c in cns) or "no names"
        rep.add(
            "tls.hostname_mismatch",
            "critical",
            f"the certificate of {where} is not valid for {name!r}; it names {names}",
            f"reissue the certificate for {name!r}, or connect with the name the certificate holds (server_hostname)",
        )


def _check_pins(pins: tuple[_Pin, ...], der: bytes, where: str, rep: _Report) -> None:
    if not pins:
        rep.data["pin_matched"] = None
        return
    cert_digest = hashlib.sha256(der).digest()
    spki = rep.data.get("spki_pin")
    spki_digest = base64.b64decode(spki[len("sha256/") :]) if spki else None
    matched = [p.text for p in pins if p.digest == (cert_digest if p.kind == "cert" else spki_digest)]
    rep.data["pin_matched"] = matched[0] if matched else None
    if not matched:
        rep.add(
            "tls.pin_mismatch",
            "critical",
            f"the certificate of {where} matches none of the {len(pins)} pin(s); its public-key pin is "
            f"{spki or 'unknown'} and its certificate SHA-256 is {cert_digest.hex()}",
            "if the server's key changed on purpose, update the pins; otherwise something is intercepting the traffic",
        )


def _check_chain(
    att: _Attempt, cert: Optional[x509.Certificate], where: str, cafile: Optional[str], rep: _Report
) -> None:
    trust = f"the CA file {cafile}" if cafile else "the system's trusted CAs"
    rep.data["verify_code"] = None
    err = att.error
    if att.completed or (
        isinstance(err, ssl.SSLError)
        and not isinstance(err, ssl.SSLCertVerificationError)
        and rejection_error(err, "", after_hello=att.after_hello) is not None
    ):
        # A server that refuses our client certificate does so after we verified its chain.
        rep.data["chain_verified"], rep.data["verify_message"] = True, "ok"
    elif isinstance(err, ssl.SSLCertVerificationError):
        code, message = err.verify_code, str(err.verify_message)
        rep.data["chain_verified"], rep.data["verify_message"], rep.data["verify_code"] = False, message, code
        if code in _UNTRUSTED_CODES:
            rep.add(
                "tls.untrusted_chain",
                "critical",
                f"the certificate chain of {where} is not trusted by {trust}: {message} (X509 error {code})",
                "install a certificate issued by a trusted CA, or pass the issuing CA's certificate (cafile)",
            )
        elif code not in _DATE_CODES or cert is None:
            rep.add(
                "tls.chain_invalid",
                "critical",
                f"the certificate chain of {where} failed verification: {message} (X509 error {code})",
                "fix the chain the server sends (intermediate certificates, their dates and extensions)",
            )
    else:
        why = "it timed out" if att.timed_out else str(err)
        rep.data["chain_verified"] = None
        rep.data["verify_message"] = f"not known: the verifying handshake failed before the chain was judged ({why})"
    if rep.data.get("self_signed"):
        trusted = rep.data["chain_verified"] is True
        rep.add(
            "tls.self_signed",
            "info" if trusted else "warning",
            f"the certificate of {where} is self-signed (issuer = subject, signed by its own key)"
            + (f"; {trust} trust it explicitly" if trusted else ""),
            "" if trusted else "use a certificate issued by a CA, or trust this one explicitly (cafile) or pin it",
        )


def _rejection(att: _Attempt) -> Optional[str]:
    """The alert by which the server refused the client, if it did."""
    for exc in (att.error, att.probe_error):
        if isinstance(exc, ssl.SSLError):
            rejected = rejection_error(exc, "", after_hello=att.after_hello)
            if rejected is not None:
                return str(rejected.reason)
    return None


def _check_client_cert(att: _Attempt, where: str, client_cert: Optional[str], rep: _Report) -> None:
    if not att.callback:  # pragma: no cover - see _watch
        rep.data["client_cert_requested"] = None
    elif att.cert_requested or att.completed:
        rep.data["client_cert_requested"] = att.cert_requested
    else:
        rep.data["client_cert_requested"] = None
    reason = _rejection(att)
    if reason is not None:
        rep.data["client_cert_requested"] = True
    # A client sends its certificate only when asked: one given to a server that did not ask was not sent.
    sent = client_cert is not None and rep.data["client_cert_requested"] is not False
    rep.data["client_cert_sent"] = sent
    rep.data["client_cert_accepted"] = (reason is None and att.completed) if sent else None
    if reason is None:
        return
    rep.data["client_cert_rejection"] = reason
    if client_cert is None:
        rep.add(
            "tls.client_cert_required",
            "warning",
            f"{where} requires a client certificate (mutual TLS): without one it refused us with a {reason} alert",
            "configure the client's certificate and key (TLSConfig cert_file/key_file; check again with client_cert)",
        )
    else:
        rep.add(
            "tls.client_cert_rejected",
            "critical",
            f"{where} refused the client certificate {client_cert} with a {reason} alert",
            "use a client certificate issued by a CA the server trusts, valid now, with clientAuth usage",
        )


def _failure(att: _Attempt, where: str, timeout: float, proxy: Optional[ProxyConfig], rep: _Report, nexus: Any) -> None:
    """The findings of a first handshake that produced no certificate."""
    err = att.error
    if att.phase in ("connect", "proxy", "socks5"):
        if att.phase == "proxy":
            assert proxy is not None
            why = f"within {timeout}s" if att.timed_out else str(err)
            message = f"cannot reach the SOCKS5 proxy {proxy.label} to tunnel to {where}: {why}"
        elif att.phase == "socks5":
            message = f"no tunnel to {where}: {err}" if err is not None else f"no tunnel to {where} within {timeout}s"
        elif att.timed_out:
            message = f"no TCP connection to {where} within {timeout}s"
        else:
            message = str(map_os_error(err, f"TCP connect to {where}", connecting=True)) if err else where
        rep.add(
            "tls.unreachable",
            "critical",
            message,
            "check the host and port, that the server runs, and the firewalls (and the proxy) on the way",
        )
        return
    first = att.first_bytes
    if first and not _looks_like_tls(first):
        rep.add(
            "tls.not_tls",
            "critical",
            f"{where} does not speak TLS: it answered the TLS ClientHello with {_name_protocol(first)}",
            "check the port: connect with the scheme the server speaks (tcp:// for plain NexusKit), "
            "or enable TLS on the server",
        )
        return
    if not first and (att.timed_out or isinstance(err, (ssl.SSLEOFError, ConnectionError, ssl.SSLZeroReturnError))):
        if nexus():
            rep.add(
                "tls.not_tls",
                "critical",
                f"{where} does not speak TLS: it speaks the NexusKit protocol in plain TCP "
                "(it answered a heartbeat, and no byte to the TLS ClientHello)",
                "connect with tcp:// instead of tls://, or enable TLS on the server",
            )
            return
    if att.timed_out:
        rep.add(
            "tls.handshake_timeout",
            "critical",
            f"{where} accepted the TCP connection but the TLS handshake did not finish within {timeout}s "
            f"({att.bytes_received} bytes received)",
            "check that the port serves TLS, and the server's load",
        )
        return
    if not first:
        detail = f"closed the connection without answering the TLS ClientHello ({err})"
    elif att.alerts:
        detail = f"sent a TLS alert: {getattr(err, 'reason', None) or err}"
    else:
        detail = f"{getattr(err, 'reason', None) or type(err).__name__} ({err})"
    rep.add(
        "tls.handshake_failed",
        "critical",
        f"the TLS handshake with {where} failed: {detail}",
        "compare the server's TLS versions, ciphers and SNI settings with the client's (TLS 1.2 or newer)",
    )


def _empty_data(name: str, proxy: Optional[ProxyConfig]) -> dict[str, Any]:
    keys = (
        "protocol cipher subject issuer sans not_before not_after days_to_expiry sha256_fingerprint spki_pin "
        "chain_verified verify_message verify_code client_cert_requested hostname_ok hostname_matched_by "
        "self_signed pin_matched chain_length handshake_ms client_cert_rejection"
    )
    data: dict[str, Any] = dict.fromkeys(keys.split())
    data["server_hostname"] = name
    data["proxy"] = proxy.label if proxy is not None else None
    return data


# ---------------------------------------------------------------------------------------------- the check
def check_tls(
    host: str,
    port: int,
    *,
    server_hostname: Optional[str] = None,
    cafile: Optional[str] = None,
    pins: Sequence[str] = (),
    client_cert: Optional[str] = None,
    client_key: Optional[str] = None,
    proxy: Optional[str] = None,
    timeout: float = 5.0,
) -> CheckResult:
    """Check the TLS endpoint ``host:port`` and report every problem at once (the module doc has the codes).

    * ``server_hostname`` -- the name sent as SNI and matched against the
      certificate (default ``host``).
    * ``cafile`` -- PEM file of the CAs to trust (default: the system's).
    * ``pins`` -- ``"sha256/<base64>"`` (SHA-256 of the public key, the HPKP
      form), ``"sha256-cert/<hex>"`` or a bare hex SHA-256 of the DER
      certificate (colons allowed); the check fails unless one matches the
      leaf certificate (``pin_matched`` names it).
    * ``client_cert`` / ``client_key`` -- a client certificate (PEM) to
      present; the result says whether the server accepted it.
    * ``proxy`` -- a ``socks5://`` or ``socks5h://`` URL to tunnel through.
    * ``timeout`` -- seconds for each connection (connect, tunnel and
      handshake together). A check makes two connections, three when it must
      tell an old TLS version or a plain NexusKit server apart, so it ends
      within about three times ``timeout``.

    Returns a :class:`~nexus_green.diagnostics.results.CheckResult` named
    ``tls``: ``status`` is ``failed`` with a critical finding, ``warning``
    with a warning, else ``ok``. ``data`` holds ``protocol``, ``cipher``
    (``{"name", "bits"}``), ``subject``, ``issuer``, ``sans``,
    ``not_before``/``not_after`` (ISO 8601 UTC), ``days_to_expiry``,
    ``sha256_fingerprint`` (hex), ``spki_pin`` (``sha256/<base64>``),
    ``chain_verified`` (None if the verifying handshake failed before the
    chain was judged) and ``verify_message`` (and ``verify_code``),
    ``client_cert_requested`` (None when unknown), ``client_cert_sent`` (a
    given certificate goes out only when the server asks), ``client_cert_accepted``
    (None unless sent), ``client_cert_rejection`` (the alert's name),
    ``hostname_ok`` (and ``hostname_matched_by``:
    ``san``, ``cn`` or None), ``self_signed``, ``pin_matched``,
    ``chain_length``, ``handshake_ms``, ``server_hostname`` and ``proxy``;
    a value not learned is None.

    It never raises for what it finds (refused port, plain-TCP peer,
    handshake failure, bad certificate); it raises ``ValueError`` for bad
    arguments, naming what is wrong, before any I/O.

    Example::

        >>> from nexus_green.testing.tls import TLSEchoServer, make_test_certificates
        >>> with make_test_certificates() as kit, TLSEchoServer(kit.server_context()) as server:
        ...     r = check_tls(*server.address, server_hostname="localhost", cafile=kit.ca_file)
        >>> r.name, r.status, r.findings, r.data["chain_verified"], r.data["protocol"]
        ('tls', 'ok', (), True, 'TLSv1.3')
        >>> check_tls("localhost", 443, pins=["md5/abc"])
        Traceback (most recent call last):
        ...
        ValueError: pin 'md5/abc' is neither 'sha256/<base64 of the SHA-256 of the public key (SPKI)>' nor the SHA-256 of the DER certificate in hex (64 hex digits, colons allowed)
    """
    started = time.perf_counter()
    name = _check_arguments(host, port, timeout, server_hostname, client_cert, client_key)
    parsed_pins = _parse_pins(pins)
    proxy_cfg = parse_proxy_url(proxy) if proxy is not None else None
    host = host.strip("[]")
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    options = {"cafile": cafile, "client_cert": client_cert, "client_key": client_key}
    look, verify = (_context(verify=v, legacy=False, **options) for v in (False, True))
    rep = _Report(data=_empty_data(name, proxy_cfg))

    def done() -> CheckResult:
        return CheckResult(
            name=_CHECK,
            status=status_of(rep.findings),
            duration_ms=(time.perf_counter() - started) * 1000.0,
            data=rep.data,
            findings=tuple(rep.findings),
        )

    att = _handshake(host, port, name, look, proxy_cfg, timeout)
    legacy = False
    if not att.completed and getattr(att.error, "reason", None) in _VERSION_REASONS:
        old = _handshake(host, port, name, _context(verify=False, legacy=True, **options), proxy_cfg, timeout)
        if old.completed or old.chain:
            att, legacy = old, True
    rep.data["protocol"] = att.version
    if att.cipher is not None:
        rep.data["cipher"] = {"name": att.cipher[0], "bits": att.cipher[2]}
    rep.data["handshake_ms"] = round(att.handshake_ms, 3) if att.completed else None
    rep.data["chain_length"] = len(att.chain) if att.chain else None
    leaf = att.leaf or (att.chain[0] if att.chain else None)
    _check_client_cert(att, where, client_cert, rep)
    if leaf is None:
        _failure(att, where, timeout, proxy_cfg, rep, lambda: _speaks_nexuskit(host, port, proxy_cfg, timeout))
        return done()
    if legacy or _PROTOCOL_ORDER.get(str(att.version), 3) < _PROTOCOL_ORDER["TLSv1.2"]:
        rep.add(
            "tls.weak_protocol",
            "critical",
            f"{where} speaks only {att.version}, which is deprecated (RFC 8996); nexus_green requires TLS 1.2 or newer",
            "enable TLS 1.2 and 1.3 on the server",
        )
    cert = _analyse(leaf, name, where, rep, datetime.datetime.now(datetime.timezone.utc))
    _check_pins(parsed_pins, leaf, where, rep)
    if legacy:
        verify = _context(verify=True, legacy=True, **options)
    checked = _handshake(host, port, name, verify, proxy_cfg, timeout)
    _check_chain(checked, cert, where, cafile, rep)
    return done()
