"""Issue 12: a server that rejects the client certificate is a ClientCertificateRejected, never a retryable ConnectionLost.

A server that requires a client certificate refuses a missing or unacceptable
one with an alert. With TLS 1.2 the alert ends the handshake; with TLS 1.3 the
server judges the client's certificate after the client finished its
handshake, so the client's handshake "succeeds" and the alert arrives on the
first read of the established link, where every other error is a
ConnectionLost (retryable). Both must surface as ClientCertificateRejected
(a TLSError, not retryable) whose ``reason`` names the alert: through
tls.wrap, through a Stream, and through a real Client's request, so retry
layers stop at once.

Peers: loopback TLS servers from nexus_green.testing.tls (gevent's server over
the stdlib ssl module, a private CA from trustme) and, where installed, the
``openssl s_server`` program, a TLS server this project did not write. Ports
are chosen by the OS; every wait is bounded. The module runs twice: plain,
and in a fresh interpreter after ``gevent.monkey.patch_all()`` (the last test).
"""

from __future__ import annotations

import datetime
import shutil
import ssl
from collections.abc import Iterator
from contextlib import closing
from typing import Any, Optional

import gevent
import pytest
from gevent import socket

import nexus_green
from nexus_green.clock import FakeClock
from nexus_green.connection import Connection, ConnectionOptions
from nexus_green.errors import (
    ClientCertificateRejected,
    ConnectError,
    ConnectionLost,
    NetworkError,
    NexusError,
    TLSError,
)
from nexus_green.resilience.retrying import is_retryable, retry
from nexus_green.testing import EmbeddedServer
from nexus_green.testing.patched import run_module_patched
from nexus_green.testing.tls import CertificateKit, TLSEchoServer, make_test_certificates, openssl_s_server
from nexus_green.transport import tls as tls_module
from nexus_green.transport.stream import Stream, map_os_error
from nexus_green.transport.tls import TLSConfig, make_context, rejection_error, wrap

pytestmark = pytest.mark.usefixtures("leakcheck")

UTC = datetime.timezone.utc
TLS12 = {"max_version": ssl.TLSVersion.TLSv1_2}
TLS13 = {"min_version": ssl.TLSVersion.TLSv1_3}
VERSIONS = pytest.mark.parametrize("version", ["TLSv1.2", "TLSv1.3"])
ECHO = 1  # EmbeddedServer's echo function


@pytest.fixture(scope="module")
def kit() -> Iterator[CertificateKit]:
    with make_test_certificates() as k:
        yield k


@pytest.fixture(scope="module")
def stranger() -> Iterator[CertificateKit]:
    """Another private CA: its client certificate is one the server's CA never issued."""
    with make_test_certificates() as k:
        yield k


def server_ctx(kit: CertificateKit, version: str) -> ssl.SSLContext:
    return kit.server_context(require_client_cert=True, **(TLS12 if version == "TLSv1.2" else TLS13))


def no_cert(kit: CertificateKit) -> TLSConfig:
    return TLSConfig(ca_file=kit.ca_file)


def foreign_cert(kit: CertificateKit, stranger: CertificateKit) -> TLSConfig:
    return TLSConfig(ca_file=kit.ca_file, cert_file=stranger.client_cert_file, key_file=stranger.client_key_file)


def connected(address: tuple[str, int]) -> closing[Any]:
    return closing(socket.create_connection(address, timeout=5))


def client_for(port: int, config: TLSConfig) -> nexus_green.Client:
    return nexus_green.Client(f"tls://localhost:{port}", tls=config, timeout=5, heartbeat_interval=None)


def request_error(port: int, config: TLSConfig) -> BaseException:
    """What a real Client's first request to ``port`` raises (it must raise)."""
    with client_for(port, config) as client:
        with pytest.raises(NexusError) as e:
            client.request(b"hello", fid=ECHO)
    return e.value


def failure_of(fn: Any, *args: Any) -> Optional[BaseException]:
    """Run ``fn`` (in a spawned greenlet) and return what it raised, so gevent prints no traceback."""
    try:
        fn(*args)
    except Exception as exc:
        return exc
    return None


def assert_rejected(exc: BaseException, reason: str) -> None:
    assert type(exc) is ClientCertificateRejected, repr(exc)
    assert isinstance(exc, TLSError) and isinstance(exc, NetworkError)
    assert exc.reason == reason
    assert exc.retryable is False and is_retryable(exc) is False
    assert not isinstance(exc, ConnectionLost)
    assert f"rejected the client with a{'n' if reason[0] in 'aeiou' else ''} {reason} alert" in str(exc)


# --------------------------------------------------------------------- (a) TLS 1.2: during the handshake
def test_tls12_without_a_client_certificate_fails_the_handshake(kit: CertificateKit) -> None:
    with TLSEchoServer(server_ctx(kit, "TLSv1.2")) as server, connected(server.address) as raw:
        with pytest.raises(ClientCertificateRejected) as e:
            wrap(raw, no_cert(kit), "localhost", 5.0, port=server.address[1])
        assert raw.fileno() == -1  # wrap owned the socket and closed it
    assert_rejected(e.value, "handshake_failure")
    assert str(e.value).startswith(f"TLS handshake with localhost:{server.address[1]} failed: ")
    assert "TLS 1.2 servers do when the client sends no certificate" in str(e.value)
    assert isinstance(e.value.__cause__, ssl.SSLError)
    assert e.value.__cause__.reason == "SSLV3_ALERT_HANDSHAKE_FAILURE"
    assert server.handshake_failures == 1


def test_tls12_rejection_through_a_client_request(kit: CertificateKit) -> None:
    with TLSEchoServer(server_ctx(kit, "TLSv1.2")) as server:
        err = request_error(server.address[1], no_cert(kit))
    assert_rejected(err, "handshake_failure")
    assert isinstance(err, ConnectError)  # it failed the connect: nothing was sent


def test_handshake_failure_before_the_server_hello_is_not_a_rejection(kit: CertificateKit) -> None:
    """No cipher in common: the same alert, but the server never got to the client's certificate."""
    ctx = kit.server_context(require_client_cert=True, **TLS12)
    ctx.set_ciphers("ECDHE-ECDSA-AES128-GCM-SHA256")
    client_ctx = make_context(no_cert(kit))
    client_ctx.set_ciphers("ECDHE-ECDSA-AES256-GCM-SHA384")
    with TLSEchoServer(ctx) as server, connected(server.address) as raw:
        with pytest.raises(TLSError) as e:
            wrap(raw, no_cert(kit), "localhost", 5.0, port=server.address[1], context=client_ctx)
    assert type(e.value) is TLSError and e.value.reason == "handshake_failed"
    assert "SSLV3_ALERT_HANDSHAKE_FAILURE" in str(e.value)


# --------------------------------------------------------------------- (b) TLS 1.3: after the handshake
def test_tls13_handshake_succeeds_and_the_first_read_is_rejected(kit: CertificateKit) -> None:
    with TLSEchoServer(server_ctx(kit, "TLSv1.3")) as server, connected(server.address) as raw:
        s = wrap(raw, no_cert(kit), "localhost", 5.0, port=server.address[1])
        stream = Stream(s, f"localhost:{server.address[1]}")
        try:
            assert s.version() == "TLSv1.3"  # the client's side of the handshake is done
            stream.sendall(b"request bytes")  # and writes go out: the server has not answered yet
            with gevent.Timeout(5):
                with pytest.raises(ClientCertificateRejected) as e:
                    stream.recv(65536)
        finally:
            stream.close()
    assert_rejected(e.value, "certificate_required")
    assert str(e.value).startswith(f"recv from localhost:{server.address[1]}: the TLS server rejected the client")
    assert "none was sent (TLSConfig cert_file/key_file)" in str(e.value)
    assert e.value.__cause__.reason == "TLSV13_ALERT_CERTIFICATE_REQUIRED"  # type: ignore[union-attr]
    assert server.handshake_failures == 1


def test_tls13_rejection_through_a_client_request(kit: CertificateKit) -> None:
    with TLSEchoServer(server_ctx(kit, "TLSv1.3")) as server:
        err = request_error(server.address[1], no_cert(kit))
    assert_rejected(err, "certificate_required")
    assert isinstance(err.__cause__, ssl.SSLError)  # the request was in flight: it got the reader's error itself
    assert err.__cause__.reason == "TLSV13_ALERT_CERTIFICATE_REQUIRED"


def test_tls13_rejection_reaches_every_concurrent_request(kit: CertificateKit) -> None:
    with TLSEchoServer(server_ctx(kit, "TLSv1.3")) as server, client_for(server.address[1], no_cert(kit)) as client:
        calls = [gevent.spawn(failure_of, client.request, b"x%d" % i, ECHO) for i in range(5)]
        gevent.joinall(calls, timeout=10)
    assert all(g.dead for g in calls)
    for g in calls:
        assert_rejected(g.value, "certificate_required")


@VERSIONS
def test_the_next_request_is_rejected_again(kit: CertificateKit, version: str) -> None:
    """While the pool backs off after a rejection, the next caller gets the rejection, not a timeout or a loss."""
    expected = "handshake_failure" if version == "TLSv1.2" else "certificate_required"
    with TLSEchoServer(server_ctx(kit, version)) as server, client_for(server.address[1], no_cert(kit)) as client:
        for _ in range(3):
            with gevent.Timeout(10), pytest.raises(NexusError) as e:
                client.request(b"again", fid=ECHO)
            assert_rejected(e.value, expected)


@VERSIONS
def test_a_standalone_connection_keeps_saying_rejected(kit: CertificateKit, version: str) -> None:
    options = ConnectionOptions(tls=no_cert(kit), heartbeat_interval=None, reconnect=False)
    with TLSEchoServer(server_ctx(kit, version)) as server:
        with closing(Connection(f"tls://localhost:{server.address[1]}", options=options)) as conn:
            errors = []
            for _ in range(2):
                with gevent.Timeout(10), pytest.raises(NexusError) as e:
                    conn.request(b"x", fid=ECHO, timeout=5)
                errors.append(e.value)
    assert_rejected(errors[0], "handshake_failure" if version == "TLSv1.2" else "certificate_required")
    assert errors[1].retryable is False, repr(errors[1])


# --------------------------------------------------------------------- (c) a certificate the server refuses
@VERSIONS
def test_unknown_ca(kit: CertificateKit, stranger: CertificateKit, version: str) -> None:
    with TLSEchoServer(server_ctx(kit, version)) as server:
        err = request_error(server.address[1], foreign_cert(kit, stranger))
    assert_rejected(err, "unknown_ca")
    assert "does not trust the CA that issued the client certificate" in str(err)


@VERSIONS
def test_unknown_ca_at_the_stream(kit: CertificateKit, stranger: CertificateKit, version: str) -> None:
    with TLSEchoServer(server_ctx(kit, version)) as server, connected(server.address) as raw:
        if version == "TLSv1.2":
            with pytest.raises(ClientCertificateRejected) as e:
                wrap(raw, foreign_cert(kit, stranger), "localhost", 5.0, port=server.address[1])
        else:
            stream = Stream(wrap(raw, foreign_cert(kit, stranger), "localhost", 5.0), "localhost")
            try:
                with gevent.Timeout(5), pytest.raises(ClientCertificateRejected) as e:
                    stream.recv(100)
            finally:
                stream.close()
    assert_rejected(e.value, "unknown_ca")


@VERSIONS
@pytest.mark.parametrize(
    "validity,reason",
    [
        ({"not_after": datetime.datetime(2020, 1, 1, tzinfo=UTC)}, "certificate_expired"),
        ({"not_before": datetime.datetime(2090, 1, 1, tzinfo=UTC)}, "bad_certificate"),  # not yet valid
    ],
    ids=["expired", "not-yet-valid"],
)
def test_client_certificate_out_of_its_validity(
    kit: CertificateKit, version: str, validity: dict[str, Any], reason: str
) -> None:
    name = "client-" + reason.replace("_", "-")
    cert, key = kit.issue_client_cert(name, **validity)
    with TLSEchoServer(server_ctx(kit, version)) as server:
        err = request_error(server.address[1], kit.client_config(cert_file=cert, key_file=key))
    assert_rejected(err, reason)


@VERSIONS
def test_the_right_client_certificate_is_served(kit: CertificateKit, version: str) -> None:
    """The control: same servers, a certificate from their CA, answers through the Client."""
    with EmbeddedServer(tls=server_ctx(kit, version)) as server, client_for(server.port, kit.client_config()) as client:
        assert client.request(b"welcome", fid=ECHO).body == b"welcome"


# --------------------------------------------------------------------- (d) retry layers stop at once
@VERSIONS
def test_retry_does_not_repeat_a_rejection(kit: CertificateKit, version: str) -> None:
    attempts: list[int] = []
    with TLSEchoServer(server_ctx(kit, version)) as server, client_for(server.address[1], no_cert(kit)) as client:

        @retry(idempotent=True, max_attempts=5, clock=FakeClock())
        def call() -> Any:
            attempts.append(1)
            return client.request(b"again?", fid=ECHO)

        with pytest.raises(ClientCertificateRejected) as e:
            call()
    assert attempts == [1]
    assert is_retryable(e.value) is False


@pytest.mark.parametrize(
    "reason", ["certificate_required", "bad_certificate", "unknown_ca", "access_denied", "handshake_failure"]
)
def test_is_retryable_is_false(reason: str) -> None:
    assert is_retryable(ClientCertificateRejected("x", reason=reason)) is False
    assert is_retryable(ConnectionLost("x")) is True  # what it used to be


# --------------------------------------------------------------------- the alert table
def ssl_alert(reason: Optional[str]) -> ssl.SSLError:
    """An ssl.SSLError as the ssl module raises it for a received alert (reason = OpenSSL's name)."""
    err = ssl.SSLError(1, f"[SSL: {reason}] alert (_ssl.c:2580)")
    err.reason = reason  # type: ignore[misc]
    err.library = "SSL"  # type: ignore[misc]
    return err


TABLE = [
    ("TLSV13_ALERT_CERTIFICATE_REQUIRED", "certificate_required"),
    ("SSLV3_ALERT_BAD_CERTIFICATE", "bad_certificate"),
    ("SSLV3_ALERT_UNSUPPORTED_CERTIFICATE", "unsupported_certificate"),
    ("SSLV3_ALERT_CERTIFICATE_REVOKED", "certificate_revoked"),
    ("SSLV3_ALERT_CERTIFICATE_EXPIRED", "certificate_expired"),
    ("SSLV3_ALERT_CERTIFICATE_UNKNOWN", "certificate_unknown"),
    ("TLSV1_ALERT_UNKNOWN_CA", "unknown_ca"),
    ("TLSV1_ALERT_ACCESS_DENIED", "access_denied"),
    ("SSLV3_ALERT_HANDSHAKE_FAILURE", "handshake_failure"),
]


@pytest.mark.parametrize("openssl_reason,reason", TABLE)
@pytest.mark.parametrize("connecting", [False, True])
def test_map_os_error_on_an_established_link(openssl_reason: str, reason: str, connecting: bool) -> None:
    err = map_os_error(ssl_alert(openssl_reason), "recv from db.internal:7600", connecting=connecting)
    assert_rejected(err, reason)
    assert str(err).startswith("recv from db.internal:7600: the TLS server rejected the client")


@pytest.mark.parametrize("openssl_reason,reason", TABLE)
def test_handshake_mapping(openssl_reason: str, reason: str) -> None:
    err = tls_module._map_handshake_error(ssl_alert(openssl_reason), "db.internal:7600", after_hello=True)
    assert_rejected(err, reason)
    assert str(err).startswith("TLS handshake with db.internal:7600 failed: the TLS server rejected the client")


@pytest.mark.parametrize(
    "exc",
    [
        ssl_alert("TLSV1_ALERT_DECRYPT_ERROR"),  # names no certificate
        ssl_alert("SSLV3_ALERT_UNEXPECTED_MESSAGE"),
        ssl_alert(None),
        ssl.SSLZeroReturnError(6, "TLS/SSL connection has been closed (EOF)"),
        ssl.SSLEOFError(8, "EOF occurred in violation of protocol"),
        ConnectionResetError(104, "Connection reset by peer"),
        TimeoutError(110, "Connection timed out"),
    ],
    ids=lambda e: getattr(e, "reason", None) or type(e).__name__,
)
def test_everything_else_on_an_established_link_stays_connection_lost(exc: OSError) -> None:
    err = map_os_error(exc, "recv from x")
    assert type(err) is ConnectionLost and err.retryable is True
    assert rejection_error(exc, "recv from x") is None


def test_handshake_failure_before_the_hello_stays_a_plain_tls_error() -> None:
    alert = ssl_alert("SSLV3_ALERT_HANDSHAKE_FAILURE")
    assert rejection_error(alert, "x", after_hello=False) is None
    err = tls_module._map_handshake_error(alert, "db.internal:7600")
    assert type(err) is TLSError and err.reason == "handshake_failed" and err.retryable is False


def test_the_rejection_is_exported() -> None:
    assert nexus_green.ClientCertificateRejected is ClientCertificateRejected
    assert "ClientCertificateRejected" in nexus_green.__all__
    assert "rejection_error" in tls_module.__all__


# --------------------------------------------------------------------- a server this project did not write
@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl program")
@VERSIONS
def test_openssl_s_server_rejections(kit: CertificateKit, stranger: CertificateKit, version: str) -> None:
    with openssl_s_server(kit.server_cert_file, kit.server_key_file, kit.ca_file, version=version) as port:
        missing = request_error(port, no_cert(kit))
    with openssl_s_server(kit.server_cert_file, kit.server_key_file, kit.ca_file, version=version) as port:
        foreign = request_error(port, foreign_cert(kit, stranger))
    assert_rejected(missing, "handshake_failure" if version == "TLSv1.2" else "certificate_required")
    assert_rejected(foreign, "unknown_ca")


# --------------------------------------------------------------------- the same, after patch_all()
def test_module_passes_under_patch_all() -> None:
    run = run_module_patched(__file__)
    assert run.returncode == 0, run.report()
