"""TLS: verification on by default, each failure its own error naming the host, pins, mTLS, SOCKS5."""

from __future__ import annotations

import base64
import datetime
import hashlib
import ssl
from collections.abc import Iterator
from contextlib import closing, contextmanager
from typing import Any

import gevent
import pytest
import trustme
from gevent import socket

from nexus_green.errors import (
    CertificateExpired,
    CertificateUntrusted,
    ClientCertificateRejected,
    ConfigurationError,
    HandshakeTimeout,
    HostnameMismatch,
    PinMismatch,
    TLSError,
)
from nexus_green.testing.scripted import scripted_peer
from nexus_green.testing.socks5_proxy import Socks5Proxy
from nexus_green.testing.tls import CertificateKit, TLSEchoServer, make_test_certificates
from nexus_green.transport import tls as tls_module
from nexus_green.transport.socks5 import open_tunnel
from nexus_green.transport.tls import TLSConfig, cert_pin, make_context, parse_pin, spki_pin, wrap

pytestmark = pytest.mark.usefixtures("leakcheck")

UTC = datetime.timezone.utc


@pytest.fixture(scope="module")
def kit() -> Iterator[CertificateKit]:
    with make_test_certificates() as k:
        yield k


def connected(address: tuple[str, int]) -> closing[Any]:
    return closing(socket.create_connection(address, timeout=5))


def echo_once(s: Any, payload: bytes = b"ping") -> bytes:
    s.sendall(payload)
    got = b""
    while len(got) < len(payload):
        chunk = s.recv(65536)
        assert chunk
        got += chunk
    return got


# --------------------------------------------------------------------- success paths
@pytest.mark.parametrize("host", ["localhost", "127.0.0.1"])
def test_verified_handshake_with_ca_file(kit: CertificateKit, host: str) -> None:
    with TLSEchoServer(kit.server_context()) as server, connected(server.address) as raw:
        s = wrap(raw, TLSConfig(ca_file=kit.ca_file), host, 5.0, port=server.address[1])
        try:
            assert isinstance(s, gevent.ssl.SSLSocket)  # cooperative, patched or not
            assert s.version() in ("TLSv1.2", "TLSv1.3")
            assert s.gettimeout() == 5  # the socket's own timeout is restored
            assert echo_once(s, b"x" * 100_000) == b"x" * 100_000
            assert s.getpeercert()["subjectAltName"][0] == ("DNS", "localhost")
        finally:
            s.close()


def test_ipv6_host_with_ca_data(kit: CertificateKit) -> None:
    with TLSEchoServer(kit.server_context(), host="::1") as server, connected(server.address) as raw:
        config = TLSConfig(ca_data=kit.ca.cert_pem.bytes().decode("ascii"))
        s = wrap(raw, config, "::1", 5.0, port=server.address[1])
        assert echo_once(s) == b"ping"
        s.close()


def test_context_reuse_and_no_timeout(kit: CertificateKit) -> None:
    config = TLSConfig(ca_file=kit.ca_file)
    ctx = make_context(config)
    with TLSEchoServer(kit.server_context()) as server:
        for _ in range(3):
            with connected(server.address) as raw:
                s = wrap(raw, config, "localhost", None, context=ctx)
                assert echo_once(s) == b"ping"
                s.close()
        assert server.connections == 3


def test_min_version_tls13(kit: CertificateKit) -> None:
    with TLSEchoServer(kit.server_context()) as server, connected(server.address) as raw:
        s = wrap(raw, TLSConfig(ca_file=kit.ca_file, min_version="TLSv1.3"), "localhost", 5.0)
        assert s.version() == "TLSv1.3"
        s.close()


def test_min_version_refused_by_an_old_server(kit: CertificateKit) -> None:
    old = kit.server_context(max_version=ssl.TLSVersion.TLSv1_2)
    with TLSEchoServer(old) as server, connected(server.address) as raw:
        with pytest.raises(TLSError, match=r"TLS handshake with 127.0.0.1:\d+ failed") as e:
            wrap(raw, TLSConfig(ca_file=kit.ca_file, min_version="TLSv1.3"), "127.0.0.1", 5.0, port=server.address[1])
        assert type(e.value) is TLSError
        assert e.value.reason in ("handshake_failed", "connection_closed")


# --------------------------------------------------------------------- verification failures
def test_untrusted_issuer(kit: CertificateKit) -> None:
    stranger = trustme.CA()
    config = TLSConfig(ca_data=stranger.cert_pem.bytes().decode("ascii"))
    with TLSEchoServer(kit.server_context()) as server, connected(server.address) as raw:
        with pytest.raises(CertificateUntrusted) as e:
            wrap(raw, config, "localhost", 5.0, port=server.address[1])
    msg = str(e.value)
    assert f"TLS certificate of localhost:{server.address[1]} is not issued by a trusted CA" in msg
    assert "unable to get local issuer certificate" in msg
    assert e.value.reason == "untrusted_issuer" and e.value.retryable is False
    assert isinstance(e.value.__cause__, ssl.SSLCertVerificationError)
    assert raw.fileno() == -1  # wrap closed the socket it took over


def test_untrusted_with_default_trust_store(kit: CertificateKit) -> None:
    with TLSEchoServer(kit.server_context()) as server, connected(server.address) as raw:
        with pytest.raises(CertificateUntrusted, match="localhost"):
            wrap(raw, TLSConfig(), "localhost", 5.0)


def test_verify_false_accepts_an_untrusted_certificate(kit: CertificateKit) -> None:
    with TLSEchoServer(kit.server_context()) as server, connected(server.address) as raw:
        s = wrap(raw, TLSConfig(verify=False), "wrong.name", 5.0)
        assert echo_once(s) == b"ping"
        s.close()


def test_expired_certificate(kit: CertificateKit) -> None:
    cert, key, _ = kit.issue_server_cert(
        "localhost",
        name="expired",
        not_before=datetime.datetime(2019, 1, 1, tzinfo=UTC),
        not_after=datetime.datetime(2020, 1, 1, tzinfo=UTC),
    )
    with TLSEchoServer(kit.server_context(cert_file=cert, key_file=key)) as server, connected(server.address) as raw:
        with pytest.raises(CertificateExpired) as e:
            wrap(raw, kit.client_config(), "localhost", 5.0, port=server.address[1])
    assert f"localhost:{server.address[1]} is expired or not yet valid" in str(e.value)
    assert "certificate has expired" in str(e.value)
    assert e.value.reason == "expired"


def test_not_yet_valid_certificate(kit: CertificateKit) -> None:
    cert, key, _ = kit.issue_server_cert(
        "localhost",
        name="future",
        not_before=datetime.datetime(2090, 1, 1, tzinfo=UTC),
        not_after=datetime.datetime(2091, 1, 1, tzinfo=UTC),
    )
    with TLSEchoServer(kit.server_context(cert_file=cert, key_file=key)) as server, connected(server.address) as raw:
        with pytest.raises(CertificateExpired, match="not yet valid"):
            wrap(raw, kit.client_config(), "localhost", 5.0)


@pytest.fixture(scope="module")
def other_name_cert(kit: CertificateKit) -> tuple[str, str, bytes]:
    return kit.issue_server_cert("api.nexus.test", name="other-name")


def test_hostname_mismatch(kit: CertificateKit, other_name_cert: tuple[str, str, bytes]) -> None:
    cert, key, _ = other_name_cert
    with TLSEchoServer(kit.server_context(cert_file=cert, key_file=key)) as server, connected(server.address) as raw:
        with pytest.raises(HostnameMismatch) as e:
            wrap(raw, kit.client_config(), "localhost", 5.0, port=server.address[1])
    assert f"localhost:{server.address[1]} does not match the host name" in str(e.value)
    assert e.value.reason == "hostname_mismatch"


def test_ip_address_mismatch(kit: CertificateKit, other_name_cert: tuple[str, str, bytes]) -> None:
    cert, key, _ = other_name_cert
    with TLSEchoServer(kit.server_context(cert_file=cert, key_file=key)) as server, connected(server.address) as raw:
        with pytest.raises(HostnameMismatch, match="127.0.0.1"):
            wrap(raw, kit.client_config(), "127.0.0.1", 5.0)


def test_server_hostname_overrides_the_name_checked_and_sent(
    kit: CertificateKit, other_name_cert: tuple[str, str, bytes]
) -> None:
    cert, key, _ = other_name_cert
    ctx = kit.server_context(cert_file=cert, key_file=key)
    sni: list[str | None] = []
    ctx.sni_callback = lambda sslobj, name, c: sni.append(name)  # type: ignore[assignment,misc,return-value]
    with TLSEchoServer(ctx) as server, connected(server.address) as raw:
        s = wrap(raw, kit.client_config(server_hostname="api.nexus.test"), "127.0.0.1", 5.0)
        assert echo_once(s) == b"ping"
        s.close()
    assert sni == ["api.nexus.test"]


def test_check_hostname_false(kit: CertificateKit, other_name_cert: tuple[str, str, bytes]) -> None:
    cert, key, _ = other_name_cert
    with TLSEchoServer(kit.server_context(cert_file=cert, key_file=key)) as server, connected(server.address) as raw:
        s = wrap(raw, kit.client_config(check_hostname=False), "localhost", 5.0)
        assert echo_once(s) == b"ping"
        s.close()


# --------------------------------------------------------------------- pins
def spki_of(kit: CertificateKit) -> str:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    key = x509.load_der_x509_certificate(kit.server_der).public_key()
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return "sha256/" + base64.b64encode(hashlib.sha256(der).digest()).decode()


def test_pin_helpers_compute_the_documented_forms(kit: CertificateKit) -> None:
    assert spki_pin(kit.server_der) == spki_of(kit)
    assert cert_pin(kit.server_der) == "sha256-cert/" + hashlib.sha256(kit.server_der).hexdigest()


@pytest.mark.parametrize("form", ["spki", "cert-hex", "cert-hex-colons", "cert-base64", "second-of-two"])
def test_matching_pin_passes(kit: CertificateKit, form: str) -> None:
    digest = hashlib.sha256(kit.server_der).digest()
    pin = {
        "spki": spki_of(kit),
        "cert-hex": "sha256-cert/" + digest.hex().upper(),
        "cert-hex-colons": "sha256-cert/" + ":".join(f"{b:02X}" for b in digest),
        "cert-base64": "sha256-cert/" + base64.b64encode(digest).decode(),
        "second-of-two": "sha256-cert/" + "00" * 32,
    }[form]
    pins = ("sha256-cert/" + "00" * 32, spki_of(kit)) if form == "second-of-two" else (pin,)
    with TLSEchoServer(kit.server_context()) as server, connected(server.address) as raw:
        s = wrap(raw, kit.client_config(pins=pins), "localhost", 5.0)
        assert echo_once(s) == b"ping"
        s.close()


def test_pin_mismatch_shows_the_actual_pins(kit: CertificateKit) -> None:
    wrong = "sha256/" + base64.b64encode(b"\x01" * 32).decode()
    with TLSEchoServer(kit.server_context()) as server, connected(server.address) as raw:
        with pytest.raises(PinMismatch) as e:
            wrap(raw, kit.client_config(pins=(wrong,)), "localhost", 5.0, port=server.address[1])
    msg = str(e.value)
    assert f"TLS certificate of localhost:{server.address[1]} matches none of the 1 configured pin(s)" in msg
    assert spki_of(kit) in msg and cert_pin(kit.server_der) in msg
    assert e.value.reason == "pin_mismatch"
    assert raw.fileno() == -1


def test_cert_pin_mismatch_does_not_need_the_spki(kit: CertificateKit) -> None:
    with TLSEchoServer(kit.server_context()) as server, connected(server.address) as raw:
        with pytest.raises(PinMismatch) as e:
            wrap(raw, kit.client_config(pins=("sha256-cert/" + "ab" * 32,)), "localhost", 5.0)
    assert "public-key pin" not in str(e.value) and cert_pin(kit.server_der) in str(e.value)


def test_pinned_self_signed_without_ca_verification(kit: CertificateKit) -> None:
    """verify=False plus a pin: the pin alone decides."""
    stranger_kit = make_test_certificates()
    try:
        with TLSEchoServer(stranger_kit.server_context()) as server:
            with connected(server.address) as raw:
                s = wrap(raw, TLSConfig(verify=False, pins=(spki_pin(stranger_kit.server_der),)), "localhost", 5.0)
                s.close()
            with connected(server.address) as raw:
                with pytest.raises(PinMismatch):
                    wrap(raw, TLSConfig(verify=False, pins=(spki_pin(kit.server_der),)), "localhost", 5.0)
    finally:
        stranger_kit.close()


# --------------------------------------------------------------------- timeouts and broken servers
@contextmanager
def silent_listener() -> Iterator[tuple[str, int]]:
    """Accepts TCP connections (in the kernel backlog) and never speaks."""
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(8)
    try:
        yield lsock.getsockname()
    finally:
        lsock.close()


def test_handshake_timeout() -> None:
    with silent_listener() as addr, connected(addr) as raw:
        with pytest.raises(HandshakeTimeout) as e:
            wrap(raw, TLSConfig(), "localhost", 0.05, port=addr[1])
    assert str(e.value) == f"TLS handshake with localhost:{addr[1]} did not finish within 0.05s"
    assert e.value.retryable is True
    assert raw.fileno() == -1


def test_handshake_timeout_from_the_socket_timeout() -> None:
    with silent_listener() as addr, connected(addr) as raw:
        raw.settimeout(0.05)
        with pytest.raises(HandshakeTimeout, match=r"TLS handshake with \[::1\]:\d+ timed out"):
            wrap(raw, TLSConfig(), "::1", None, port=addr[1])


def test_foreign_timeout_propagates() -> None:
    with silent_listener() as addr, connected(addr) as raw:
        with pytest.raises(gevent.Timeout):
            with gevent.Timeout(0.05):
                wrap(raw, TLSConfig(), "localhost", 10.0)
        assert raw.fileno() == -1


def test_server_closing_during_handshake() -> None:
    with scripted_peer(lambda sock: sock.recv(1)) as addr, connected(addr) as raw:
        with pytest.raises(TLSError, match="the server closed the connection") as e:
            wrap(raw, TLSConfig(), "localhost", 5.0, port=addr[1])
    assert e.value.reason == "connection_closed" and e.value.retryable is True


def test_plaintext_server() -> None:
    def script(sock: Any) -> None:
        sock.recv(1024)
        sock.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n" * 4)
        sock.recv(1024)

    with scripted_peer(script) as addr, connected(addr) as raw:
        with pytest.raises(
            TLSError, match=r"TLS handshake with localhost failed: (WRONG_VERSION_NUMBER|.*record)"
        ) as e:
            wrap(raw, TLSConfig(), "localhost", 5.0)
    assert type(e.value) is TLSError and e.value.reason == "handshake_failed"


def test_bad_host_name_is_refused_before_the_handshake(kit: CertificateKit) -> None:
    with TLSEchoServer(kit.server_context()) as server, connected(server.address) as raw:
        with pytest.raises(ConfigurationError, match="TLS host name '.bad' for .bad is not a valid host name"):
            wrap(raw, kit.client_config(), ".bad", 5.0)
        assert raw.fileno() == -1


def test_a_socket_that_cannot_carry_tls_fails_setup_and_is_closed() -> None:
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with pytest.raises(TLSError, match="TLS setup for localhost:9 failed: NotImplementedError") as e:
        wrap(udp, TLSConfig(), "localhost", 5.0, port=9)
    assert e.value.reason == "handshake_failed"
    assert udp.fileno() == -1


def test_other_verification_errors_and_os_errors_map_to_plain_tls_error() -> None:
    err = ssl.SSLCertVerificationError(1, "certificate verify failed")
    err.verify_code = 23
    err.verify_message = "certificate revoked"
    mapped = tls_module._map_handshake_error(err, "h:1")
    assert type(mapped) is TLSError and mapped.reason == "certificate_invalid"
    assert str(mapped) == "TLS certificate of h:1 failed verification: certificate revoked (X509 error 23)"
    other = tls_module._map_handshake_error(OSError(22, "Invalid argument"), "h:1")
    assert type(other) is TLSError and other.retryable is True and "Invalid argument" in str(other)


# --------------------------------------------------------------------- mutual TLS
def test_mutual_tls_presents_the_client_certificate(kit: CertificateKit) -> None:
    with TLSEchoServer(kit.server_context(require_client_cert=True)) as server, connected(server.address) as raw:
        s = wrap(raw, kit.client_config(), "localhost", 5.0)
        assert echo_once(s) == b"ping"  # TLS 1.3 checks the client certificate after the handshake
        s.close()
    [subject] = server.client_certs
    assert (("commonName", "nexus-green test client"),) in subject


def test_mutual_tls_without_a_client_certificate_fails(kit: CertificateKit) -> None:
    ctx = kit.server_context(require_client_cert=True, max_version=ssl.TLSVersion.TLSv1_2)
    with TLSEchoServer(ctx) as server, connected(server.address) as raw:
        with pytest.raises(TLSError, match=r"TLS handshake with localhost:\d+ failed") as e:
            wrap(raw, TLSConfig(ca_file=kit.ca_file), "localhost", 5.0, port=server.address[1])
        assert type(e.value) is ClientCertificateRejected and e.value.retryable is False  # test_tls_rejection.py
    assert server.handshake_failures == 1


# --------------------------------------------------------------------- TLS through SOCKS5
@pytest.mark.parametrize("auth", [False, True])
def test_tls_over_socks5(kit: CertificateKit, auth: bool) -> None:
    creds = {"username": "u", "password": "p"} if auth else {"username": None, "password": None}
    with TLSEchoServer(kit.server_context(require_client_cert=True)) as server:
        proxy_kwargs = {"username": "u", "password": "p"} if auth else {}
        with Socks5Proxy(**proxy_kwargs) as proxy, connected(proxy.address) as raw:  # type: ignore[arg-type]
            open_tunnel(
                raw,
                target_host="localhost",
                target_port=server.address[1],
                remote_dns=True,
                proxy_label=proxy.url,
                **creds,  # type: ignore[arg-type]
            )
            config = kit.client_config(pins=(spki_pin(kit.server_der),))
            s = wrap(raw, config, "localhost", 5.0, port=server.address[1])
            try:
                payload = bytes(range(256)) * 512
                assert echo_once(s, payload) == payload
                assert proxy.tunnels_active == 1
                assert proxy.requests[0].atyp == "domain" and proxy.requests[0].host == "localhost"
            finally:
                s.close()
    assert server.client_certs


def test_tls_verification_failure_through_socks5_names_the_target(kit: CertificateKit) -> None:
    with TLSEchoServer(kit.server_context()) as server, Socks5Proxy() as proxy, connected(proxy.address) as raw:
        open_tunnel(
            raw,
            target_host="127.0.0.1",
            target_port=server.address[1],
            username=None,
            password=None,
            remote_dns=False,
            proxy_label=proxy.url,
        )
        with pytest.raises(HostnameMismatch, match=f"certificate of db.internal:{server.address[1]}"):
            wrap(raw, kit.client_config(), "db.internal", 5.0, port=server.address[1])


# --------------------------------------------------------------------- configuration
@pytest.mark.parametrize(
    "kwargs,text",
    [
        ({"min_version": "TLSv1.1"}, "min_version must be one of TLSv1.2, TLSv1.3, not 'TLSv1.1'"),
        ({"key_file": "k.pem"}, "key_file needs cert_file"),
        ({"server_hostname": ""}, "server_hostname '' is not a valid host name"),
        ({"server_hostname": ".x"}, "server_hostname '.x' is not a valid host name"),
        ({"pins": "sha256/abc"}, "pins must be a tuple of pins, not one string"),
        ({"pins": ("sha1/abc",)}, "must start with 'sha256/'"),
        ({"pins": ("sha256/not base64!",)}, "not a SHA-256 digest in base64"),
        ({"pins": ("sha256/" + base64.b64encode(b"x" * 20).decode(),)}, "32 bytes"),
        ({"pins": ("sha256-cert/abcd",)}, "hex or base64"),
        ({"pins": ("sha256-cert/" + "zz" * 32,)}, "hex or base64"),
        ({"pins": (b"sha256/xx",)}, "pin must be a string, not bytes"),
    ],
)
def test_bad_config(kwargs: dict, text: str) -> None:
    with pytest.raises(ConfigurationError, match=text):
        TLSConfig(**kwargs)


def test_config_defaults_and_pins_as_list() -> None:
    cfg = TLSConfig(pins=["sha256-cert/" + "00" * 32])  # type: ignore[arg-type]
    assert cfg.pins == ("sha256-cert/" + "00" * 32,)
    d = TLSConfig()
    assert (d.verify, d.check_hostname, d.min_version, d.pins, d.ca_file, d.server_hostname) == (
        True,
        True,
        "TLSv1.2",
        (),
        None,
        None,
    )
    assert parse_pin("sha256-cert/" + "00" * 32) == ("cert", b"\x00" * 32)


def test_make_context_defaults() -> None:
    ctx = make_context(TLSConfig())
    assert isinstance(ctx, gevent.ssl.SSLContext)
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2


def test_make_context_bad_files(tmp_path: Any, kit: CertificateKit) -> None:
    with pytest.raises(ConfigurationError, match="cannot load TLS CA certificates .*missing.pem"):
        make_context(TLSConfig(ca_file=str(tmp_path / "missing.pem")))
    with pytest.raises(ConfigurationError, match="cannot load TLS CA certificates \\(ca_data\\)"):
        make_context(TLSConfig(ca_data="not a certificate"))
    with pytest.raises(
        ConfigurationError, match="cannot load TLS client certificate .*client.pem \\(key in the same file\\)"
    ):
        make_context(TLSConfig(cert_file=kit.client_cert_file))
    with pytest.raises(ConfigurationError, match="key .*server.key"):
        make_context(TLSConfig(cert_file=kit.client_cert_file, key_file=kit.server_key_file))
