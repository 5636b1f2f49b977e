"""TLS for nexus_green connections: options, context factory and the handshake (layer L2).

This module owns :class:`TLSConfig` (every TLS option with its default),
:func:`make_context` (an ``ssl.SSLContext`` built from it through
``gevent.ssl``, so the sockets it wraps are cooperative whether or not the
application monkey-patched), :func:`wrap` (handshake with a timeout, then
certificate pinning) and the mapping of every handshake failure to a specific
:class:`~nexus_green.errors.TLSError` subclass whose message names the host:

====================================  ============================================
failure                               error (``reason``)
====================================  ============================================
issuer not trusted, self-signed       :class:`CertificateUntrusted` (untrusted_issuer)
expired or not yet valid              :class:`CertificateExpired` (expired)
certificate does not name the host    :class:`HostnameMismatch` (hostname_mismatch)
no configured pin matches             :class:`PinMismatch` (pin_mismatch)
the server rejects the client         :class:`ClientCertificateRejected` (the alert)
handshake exceeded ``timeout``        :class:`HandshakeTimeout` (a ConnectTimeout)
anything else (protocol, EOF, alert)  :class:`TLSError` (handshake_failed, ...)
====================================  ============================================

The server rejects the client with an alert, mapped by :func:`rejection_error`
wherever it arrives: during the handshake (TLS 1.2), or on the first read of
an established link (TLS 1.3 servers judge the client certificate after the
client finished its handshake; :func:`~nexus_green.transport.stream.map_os_error`
maps it there). Every one is a :class:`ClientCertificateRejected`, not
retryable, whose ``reason`` names the alert:

=========================================  ==========================
OpenSSL reason (alert received)            ``reason``
=========================================  ==========================
``TLSV13_ALERT_CERTIFICATE_REQUIRED``      certificate_required
``SSLV3_ALERT_BAD_CERTIFICATE``            bad_certificate
``SSLV3_ALERT_UNSUPPORTED_CERTIFICATE``    unsupported_certificate
``SSLV3_ALERT_CERTIFICATE_REVOKED``        certificate_revoked
``SSLV3_ALERT_CERTIFICATE_EXPIRED``        certificate_expired
``SSLV3_ALERT_CERTIFICATE_UNKNOWN``        certificate_unknown
``TLSV1_ALERT_UNKNOWN_CA``                 unknown_ca
``TLSV1_ALERT_ACCESS_DENIED``              access_denied
``SSLV3_ALERT_HANDSHAKE_FAILURE``          handshake_failure, only once the server's
                                           hello was processed (TLS 1.2 servers refuse a
                                           missing client certificate so); before it,
                                           it is a negotiation failure: a plain
                                           :class:`TLSError` (handshake_failed)
=========================================  ==========================

Pin syntax (``TLSConfig.pins``; a connection passes if ANY pin matches):

* ``"sha256/<base64>"`` -- SHA-256 of the certificate's SubjectPublicKeyInfo
  (DER), base64 with padding: the HPKP / OkHttp / curl ``--pinnedpubkey``
  format. Survives certificate renewal with the same key. Needs the
  ``cryptography`` package at run time.
* ``"sha256-cert/<hex or base64>"`` -- SHA-256 of the whole DER certificate;
  hex may use colons (``openssl x509 -fingerprint -sha256`` output). No extra
  dependency.

:func:`spki_pin` and :func:`cert_pin` compute both forms from a DER
certificate, and a :class:`PinMismatch` message shows the server's actual
pins, so the right value can be copied from the error.

Example::

    >>> cfg = TLSConfig(ca_file=None, min_version="TLSv1.3", server_hostname="api.internal")
    >>> ctx = make_context(cfg)
    >>> ctx.verify_mode == ssl.CERT_REQUIRED, ctx.check_hostname, ctx.minimum_version.name
    (True, True, 'TLSv1_3')
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import ssl
from dataclasses import dataclass
from typing import Any, Optional

import gevent
import gevent.ssl

from ..errors import (
    CertificateExpired,
    CertificateUntrusted,
    ClientCertificateRejected,
    ConfigurationError,
    HandshakeTimeout,
    HostnameMismatch,
    PinMismatch,
    TLSError,
)

__all__ = [
    "TLSConfig",
    "make_context",
    "wrap",
    "spki_pin",
    "cert_pin",
    "parse_pin",
    "check_pins",
    "rejection_error",
    "TLS_VERSIONS",
]

TLS_VERSIONS = {"TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1.3": ssl.TLSVersion.TLSv1_3}

# OpenSSL X509_V_ERR_* codes, grouped by what went wrong.
_EXPIRED_CODES = frozenset({9, 10})  # CERT_NOT_YET_VALID, CERT_HAS_EXPIRED
_HOSTNAME_CODES = frozenset({62, 63, 64})  # HOSTNAME_MISMATCH, EMAIL_MISMATCH, IP_ADDRESS_MISMATCH
_UNTRUSTED_CODES = frozenset(
    {
        2,  # UNABLE_TO_GET_ISSUER_CERT
        7,  # CERT_SIGNATURE_FAILURE
        18,  # DEPTH_ZERO_SELF_SIGNED_CERT
        19,  # SELF_SIGNED_CERT_IN_CHAIN
        20,  # UNABLE_TO_GET_ISSUER_CERT_LOCALLY
        21,  # UNABLE_TO_VERIFY_LEAF_SIGNATURE
        24,  # INVALID_CA
        27,  # CERT_UNTRUSTED
        28,  # CERT_REJECTED
    }
)
# Alerts by which a server refuses the client, as OpenSSL names them on
# receipt (reason = 1000 + the alert number). Our own verification of the
# server never produces these (it raises SSLCertVerificationError), so each
# one is the server's verdict on us.
_REJECTION_ALERTS = {
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": "certificate_required",
    "SSLV3_ALERT_BAD_CERTIFICATE": "bad_certificate",
    "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE": "unsupported_certificate",
    "SSLV3_ALERT_CERTIFICATE_REVOKED": "certificate_revoked",
    "SSLV3_ALERT_CERTIFICATE_EXPIRED": "certificate_expired",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN": "certificate_unknown",
    "TLSV1_ALERT_UNKNOWN_CA": "unknown_ca",
    "TLSV1_ALERT_ACCESS_DENIED": "access_denied",
}
# handshake_failure before the server's hello means no common version or
# cipher; after it, TLS 1.2 servers send it for a missing or refused client
# certificate (OpenSSL: "peer did not return a certificate").
_HANDSHAKE_FAILURE = "SSLV3_ALERT_HANDSHAKE_FAILURE"
_REJECTION_HINTS = {
    "certificate_required": "the server requires a client certificate and none was sent (TLSConfig cert_file/key_file)",
    "bad_certificate": "the server refused the client certificate (not yet valid, malformed or badly signed)",
    "unsupported_certificate": "the server does not accept this kind of client certificate (key type or key usage)",
    "certificate_revoked": "the server says the client certificate is revoked",
    "certificate_expired": "the server says the client certificate has expired",
    "certificate_unknown": "the server could not accept the client certificate",
    "unknown_ca": "the server does not trust the CA that issued the client certificate",
    "access_denied": "the server identified the client and denies it access",
    "handshake_failure": "the server ended the handshake after its hello, as TLS 1.2 servers do when the client "
    "sends no certificate or one they refuse",
}
_SPKI_PREFIX = "sha256/"
_CERT_PREFIX = "sha256-cert/"


def parse_pin(pin: str) -> tuple[str, bytes]:
    """Parse one pin into ``("spki" | "cert", 32-byte digest)``; a bad pin is a ConfigurationError.

    Example::

        >>> kind, digest = parse_pin("sha256-cert/" + "AB:" * 31 + "AB")
        >>> kind, len(digest)
        ('cert', 32)
        >>> parse_pin("md5/xyz")
        Traceback (most recent call last):
        ...
        nexus_green.errors.ConfigurationError: TLS pin 'md5/xyz' must start with 'sha256/' (public key) or 'sha256-cert/' (certificate)
    """
    if not isinstance(pin, str):
        raise ConfigurationError(f"TLS pin must be a string, not {type(pin).__name__}")
    if pin.startswith(_SPKI_PREFIX):
        kind, value = "spki", pin[len(_SPKI_PREFIX) :]
    elif pin.startswith(_CERT_PREFIX):
        kind, value = "cert", pin[len(_CERT_PREFIX) :]
    else:
        raise ConfigurationError(
            f"TLS pin {pin!r} must start with {_SPKI_PREFIX!r} (public key) or {_CERT_PREFIX!r} (certificate)"
        )
    digest: Optional[bytes] = None
    hexed = value.replace(":", "")
    if kind == "cert" and len(hexed) == 64:
        try:
            digest = bytes.fromhex(hexed)
        except ValueError:
            digest = None
    if digest is None:
        try:
            digest = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            digest = None
    if digest is None or len(digest) != 32:
        form = "base64" if kind == "spki" else "hex or base64"
        raise ConfigurationError(f"TLS pin {pin!r} is not a SHA-256 digest in {form} (32 bytes)")
    return kind, digest


@dataclass(frozen=True, slots=True, kw_only=True)
class TLSConfig:
    """TLS options of a connection. The defaults verify everything.

    * ``verify`` (True) -- check the certificate chain against the trusted
      CAs. ``False`` accepts any certificate (pins still apply: pinning a
      self-signed certificate is a sound setup).
    * ``ca_file`` / ``ca_data`` (None) -- PEM bundle path / PEM text of trusted
      CAs; with neither, the system's default CAs are trusted.
    * ``cert_file`` / ``key_file`` (None) -- client certificate (PEM, may
      include the key) and its key, for mutual TLS.
    * ``server_hostname`` (None) -- name sent in SNI and checked against the
      certificate instead of the host connected to.
    * ``check_hostname`` (True) -- match the certificate to the host name.
    * ``min_version`` ("TLSv1.2") -- "TLSv1.2" or "TLSv1.3".
    * ``pins`` (()) -- ``"sha256/<base64 SPKI digest>"`` or
      ``"sha256-cert/<hex or base64 certificate digest>"``; see the module doc.

    Invalid values raise :class:`~nexus_green.errors.ConfigurationError` at
    construction.

    Example::

        >>> TLSConfig(pins=("sha256/" + "A" * 43 + "=",)).pins[0][:7]
        'sha256/'
        >>> TLSConfig(key_file="client.key")
        Traceback (most recent call last):
        ...
        nexus_green.errors.ConfigurationError: TLSConfig key_file needs cert_file (the client certificate)
    """

    verify: bool = True
    ca_file: Optional[str] = None
    ca_data: Optional[str] = None
    cert_file: Optional[str] = None
    key_file: Optional[str] = None
    server_hostname: Optional[str] = None
    check_hostname: bool = True
    min_version: str = "TLSv1.2"
    pins: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.min_version not in TLS_VERSIONS:
            raise ConfigurationError(
                f"TLSConfig min_version must be one of {', '.join(TLS_VERSIONS)}, not {self.min_version!r}"
            )
        if self.server_hostname is not None and (not self.server_hostname or self.server_hostname.startswith(".")):
            raise ConfigurationError(f"TLSConfig server_hostname {self.server_hostname!r} is not a valid host name")
        if self.key_file is not None and self.cert_file is None:
            raise ConfigurationError("TLSConfig key_file needs cert_file (the client certificate)")
        if isinstance(self.pins, str):
            raise ConfigurationError("TLSConfig pins must be a tuple of pins, not one string")
        object.__setattr__(self, "pins", tuple(self.pins))
        for pin in self.pins:
            parse_pin(pin)


def make_context(config: TLSConfig) -> ssl.SSLContext:
    """Build a client ``SSLContext`` from ``config`` (a ``gevent.ssl.SSLContext``).

    Building a context reads CA files, so build one per configuration and
    reuse it (:func:`wrap` accepts ``context=``). A file that cannot be read
    raises :class:`~nexus_green.errors.ConfigurationError` naming it.

    Example::

        >>> ctx = make_context(TLSConfig(verify=False))
        >>> ctx.verify_mode == ssl.CERT_NONE, ctx.check_hostname
        (True, False)
    """
    ctx = gevent.ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = TLS_VERSIONS[config.min_version]
    if config.verify:
        ctx.check_hostname = config.check_hostname
        ctx.verify_mode = ssl.CERT_REQUIRED
        try:
            if config.ca_file is None and config.ca_data is None:
                ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
            if config.ca_file is not None:
                ctx.load_verify_locations(cafile=config.ca_file)
            if config.ca_data is not None:
                ctx.load_verify_locations(cadata=config.ca_data)
        except (OSError, ssl.SSLError) as e:
            raise ConfigurationError(f"cannot load TLS CA certificates ({config.ca_file or 'ca_data'}): {e}") from e
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if config.cert_file is not None:
        try:
            ctx.load_cert_chain(config.cert_file, config.key_file)
        except (OSError, ssl.SSLError) as e:
            raise ConfigurationError(
                f"cannot load TLS client certificate {config.cert_file} (key {config.key_file or 'in the same file'}): {e}"
            ) from e
    return ctx


def cert_pin(der: bytes) -> str:
    """The ``sha256-cert/<hex>`` pin of a DER certificate.

    Example::

        >>> cert_pin(b"not really a certificate")[:20]
        'sha256-cert/d6182255'
    """
    return _CERT_PREFIX + hashlib.sha256(der).hexdigest()


def spki_pin(der: bytes) -> str:
    """The ``sha256/<base64>`` pin of a DER certificate's public key (needs ``cryptography``).

    Example::

        >>> from nexus_green.testing.tls import make_test_certificates
        >>> with make_test_certificates() as certs:
        ...     spki_pin(certs.server_der).startswith("sha256/")
        True
    """
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization
    except ImportError as e:  # pragma: no cover - cryptography is installed wherever tests run
        raise ConfigurationError("public-key pins (sha256/...) need the 'cryptography' package") from e
    public_key = x509.load_der_x509_certificate(der).public_key()
    spki = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return _SPKI_PREFIX + base64.b64encode(hashlib.sha256(spki).digest()).decode("ascii")


def _where(host: str, port: Optional[int]) -> str:
    if port is None:
        return host
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _map_verify_error(e: ssl.SSLCertVerificationError, where: str) -> TLSError:
    code = e.verify_code
    detail = f"{e.verify_message} (X509 error {code})"
    if code in _EXPIRED_CODES:
        return CertificateExpired(f"TLS certificate of {where} is expired or not yet valid: {detail}")
    if code in _HOSTNAME_CODES:
        return HostnameMismatch(f"TLS certificate of {where} does not match the host name: {detail}")
    if code in _UNTRUSTED_CODES:
        return CertificateUntrusted(f"TLS certificate of {where} is not issued by a trusted CA: {detail}")
    return TLSError(f"TLS certificate of {where} failed verification: {detail}", reason="certificate_invalid")


def rejection_error(exc: BaseException, what: str, *, after_hello: bool = True) -> Optional[ClientCertificateRejected]:
    """The :class:`ClientCertificateRejected` for an alert by which the server refused us, else None.

    ``what`` starts the message (it names the host). ``after_hello`` says
    whether the server's hello had been processed when the alert came: a
    ``handshake_failure`` alert only rejects the client after it. On an
    established link (the TLS 1.3 case) it always had been: the default.

    Example::

        >>> alert = ssl.SSLError(1, "[SSL: TLSV1_ALERT_UNKNOWN_CA] tlsv1 alert unknown ca")
        >>> alert.reason = "TLSV1_ALERT_UNKNOWN_CA"
        >>> e = rejection_error(alert, "recv from db.internal:7600")
        >>> type(e).__name__, e.reason, e.retryable
        ('ClientCertificateRejected', 'unknown_ca', False)
        >>> print(e)
        recv from db.internal:7600: the TLS server rejected the client with an unknown_ca alert: the server does not trust the CA that issued the client certificate
        >>> rejection_error(ConnectionResetError(104, "reset"), "recv from x") is None
        True
    """
    if not isinstance(exc, ssl.SSLError):
        return None
    name = getattr(exc, "reason", None)
    reason = _REJECTION_ALERTS.get(name) if isinstance(name, str) else None
    if reason is None and name == _HANDSHAKE_FAILURE and after_hello:
        reason = "handshake_failure"
    if reason is None:
        return None
    article = "an" if reason[0] in "aeiou" else "a"
    return ClientCertificateRejected(
        f"{what}: the TLS server rejected the client with {article} {reason} alert: {_REJECTION_HINTS[reason]}",
        reason=reason,
    )


def _map_handshake_error(e: OSError, where: str, *, after_hello: bool = False) -> TLSError:
    if isinstance(e, ssl.SSLCertVerificationError):
        return _map_verify_error(e, where)
    rejected = rejection_error(e, f"TLS handshake with {where} failed", after_hello=after_hello)
    if rejected is not None:
        return rejected
    if isinstance(e, (ssl.SSLEOFError, ssl.SSLZeroReturnError, ConnectionError)):
        return TLSError(
            f"TLS handshake with {where} failed: the server closed the connection ({e})",
            reason="connection_closed",
            retryable=True,
        )
    if isinstance(e, ssl.SSLError):
        name = e.reason or e.__class__.__name__
        return TLSError(f"TLS handshake with {where} failed: {name} ({e})", reason="handshake_failed")
    return TLSError(f"TLS handshake with {where} failed: {e}", reason="handshake_failed", retryable=True)


def check_pins(der: bytes, pins: tuple[str, ...], where: str) -> None:
    """Raise :class:`PinMismatch` unless the DER certificate matches one of ``pins`` (no pins: pass).

    Example::

        >>> check_pins(b"cert", (), "h")
        >>> check_pins(b"cert", (cert_pin(b"cert"),), "h")
        >>> check_pins(b"cert", (cert_pin(b"other"),), "h")
        Traceback (most recent call last):
        ...
        nexus_green.errors.PinMismatch: TLS certificate of h matches none of the 1 configured pin(s); its certificate pin is sha256-cert/0629...
    """
    if not pins:
        return
    parsed = [parse_pin(p) for p in pins]
    cert_digest = hashlib.sha256(der).digest()
    spki: Optional[str] = None
    for kind, digest in parsed:
        if kind == "cert" and digest == cert_digest:
            return
        if kind == "spki":
            spki = spki or spki_pin(der)
            if base64.b64decode(spki[len(_SPKI_PREFIX) :]) == digest:
                return
    actual = f"its certificate pin is {cert_pin(der)}"
    if spki is not None:
        actual = f"its public-key pin is {spki} and {actual}"
    raise PinMismatch(f"TLS certificate of {where} matches none of the {len(pins)} configured pin(s); {actual}")


def wrap(
    sock: Any,
    config: TLSConfig,
    host: str,
    timeout: Optional[float],
    *,
    port: Optional[int] = None,
    context: Optional[ssl.SSLContext] = None,
) -> ssl.SSLSocket:
    """Secure a connected socket: TLS handshake within ``timeout`` seconds, then pin check.

    ``host`` is the name the certificate must match (``config.server_hostname``
    overrides it, and is also sent as SNI; IP addresses are matched against
    the IP SANs and not sent as SNI). ``port`` only appears in messages.
    ``context`` reuses a context from :func:`make_context` (otherwise one is
    built per call). ``timeout=None`` means no limit.

    Returns the cooperative ``SSLSocket`` (its timeout restored to the one
    ``sock`` had). On any failure the socket is closed (``wrap`` owns it from
    the call on) and a :class:`~nexus_green.errors.TLSError` subclass or
    :class:`~nexus_green.errors.HandshakeTimeout` is raised, naming
    ``host:port``.

    Example::

        >>> import gevent
        >>> from gevent import socket
        >>> from nexus_green.testing.tls import TLSEchoServer, make_test_certificates
        >>> with make_test_certificates() as certs, TLSEchoServer(certs.server_context()) as server:
        ...     raw = socket.create_connection(server.address, timeout=5)
        ...     tls = wrap(raw, TLSConfig(ca_file=certs.ca_file), "localhost", 5.0, port=server.address[1])
        ...     tls.sendall(b"ping"); reply = tls.recv(4); tls.close()
        >>> reply
        b'ping'
    """
    where = _where(host, port)
    ctx = context if context is not None else make_context(config)
    server_hostname = config.server_hostname or host
    if server_hostname.startswith("[") and server_hostname.endswith("]"):
        server_hostname = server_hostname[1:-1]
    # Checked here because gevent's SSLSocket leaks the descriptor it already
    # took over when the ssl module rejects the name with a ValueError.
    if not server_hostname or server_hostname.startswith("."):
        sock.close()
        raise ConfigurationError(f"TLS host name {server_hostname!r} for {where} is not a valid host name")
    old_timeout = sock.gettimeout()
    try:
        ssock = ctx.wrap_socket(sock, server_hostname=server_hostname, do_handshake_on_connect=False)
    except (OSError, ValueError, NotImplementedError) as e:
        sock.close()
        raise TLSError(f"TLS setup for {where} failed: {e!r}", reason="handshake_failed") from e
    timer = gevent.Timeout(timeout) if timeout is not None else None
    if timer is not None:
        timer.start()
    try:
        ssock.do_handshake()
        if config.pins:
            der = ssock.getpeercert(binary_form=True)
            if der is None:  # pragma: no cover - a completed client handshake always has a peer certificate
                raise PinMismatch(f"TLS server {where} presented no certificate to check the pins against")
            check_pins(der, config.pins, where)
    except gevent.Timeout as t:
        ssock.close()
        if t is not timer:
            raise
        raise HandshakeTimeout(f"TLS handshake with {where} did not finish within {timeout}s") from None
    except PinMismatch:
        ssock.close()
        raise
    except OSError as e:
        # A cipher is known once the server's hello was processed: read it before close() forgets it.
        after_hello = ssock.cipher() is not None
        ssock.close()
        if isinstance(e, TimeoutError):  # the socket's own timeout fired first
            raise HandshakeTimeout(f"TLS handshake with {where} timed out ({e})") from e
        raise _map_handshake_error(e, where, after_hello=after_hello) from e
    except BaseException:
        ssock.close()  # killed, or someone else's timeout: the descriptor must not outlive the handshake
        raise
    finally:
        if timer is not None:
            timer.close()
    ssock.settimeout(old_timeout)
    return ssock
