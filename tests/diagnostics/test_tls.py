"""Issue 19: check_tls reports every problem of a TLS endpoint at once.

Peers: loopback TLS servers from nexus_green.testing.tls (gevent's server over
the stdlib ssl module, certificates made on the fly from a private trustme CA,
and deliberately broken ones from ``CertificateKit.issue_custom_cert``), the
hostile raw-socket peers of nexus_green.testing (refused port, a peer that
closes, one that stalls, one that answers HTTP or garbage), the embedded
NexusKit server in plain TCP, and the test SOCKS5 proxy. Ports are chosen by
the OS; every wait is bounded by the check's timeout. The module runs twice:
plain, and in a fresh interpreter after ``gevent.monkey.patch_all()`` (the
last test).
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import re
import shutil
import ssl
import warnings
from collections.abc import Iterator
from typing import Any, Optional

import pytest

from nexus_green.diagnostics import tls as tls_check
from nexus_green.diagnostics.results import CheckResult
from nexus_green.diagnostics.tls import FINDING_CODES, check_tls, match_hostname
from nexus_green.errors import InvalidURL
from nexus_green.testing import (
    EmbeddedServer,
    Socks5Proxy,
    accept_and_close,
    accept_and_stall,
    blackhole,
    refusing_port,
    scripted_peer,
)
from nexus_green.testing.patched import run_module_patched
from nexus_green.testing.tls import CertificateKit, TLSEchoServer, make_test_certificates, openssl_s_server
from nexus_green.transport.tls import spki_pin

pytestmark = pytest.mark.usefixtures("leakcheck")

UTC = datetime.timezone.utc
TLS12 = {"max_version": ssl.TLSVersion.TLSv1_2}
TLS13 = {"min_version": ssl.TLSVersion.TLSv1_3}
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
DATA_KEYS = {
    "protocol",
    "cipher",
    "subject",
    "issuer",
    "sans",
    "not_before",
    "not_after",
    "days_to_expiry",
    "sha256_fingerprint",
    "spki_pin",
    "chain_verified",
    "verify_message",
    "client_cert_requested",
    "hostname_ok",
}


@pytest.fixture(scope="module")
def kit() -> Iterator[CertificateKit]:
    with make_test_certificates() as certs:
        yield certs


def now() -> datetime.datetime:
    return datetime.datetime.now(UTC)


def codes(result: CheckResult) -> list[str]:
    return [f.code for f in result.findings]


def finding(result: CheckResult, code: str) -> Any:
    found = [f for f in result.findings if f.code == code]
    assert len(found) == 1, f"{code} not exactly once in {codes(result)}"
    return found[0]


def serve(kit: CertificateKit, cert: Optional[tuple[str, str, bytes]] = None, **options: Any) -> TLSEchoServer:
    files = {} if cert is None else {"cert_file": cert[0], "key_file": cert[1]}
    return TLSEchoServer(kit.server_context(**files, **options))


def check(server: Any, **options: Any) -> CheckResult:
    options.setdefault("timeout", 5.0)
    return validate(check_tls(*server.address, **options))


def validate(result: CheckResult) -> CheckResult:
    """The result's shape: every data key, JSON-ready findings, declared codes with their severities."""
    assert result.name == "tls"
    assert DATA_KEYS <= set(result.data), DATA_KEYS - set(result.data)
    assert result.to_dict()["findings"] == [f.to_dict() for f in result.findings]
    for f in result.findings:
        assert f.check == "tls" and f.message
        trusted_self_signed = f.code == "tls.self_signed" and result.data["chain_verified"] is True
        assert f.severity == ("info" if trusted_self_signed else FINDING_CODES[f.code]), f
        assert bool(f.recommendation) is not trusted_self_signed, f
    return result


# --------------------------------------------------------------------------- a good certificate
@pytest.mark.parametrize("version", [TLS12, TLS13], ids=["TLSv1.2", "TLSv1.3"])
def test_good_certificate_with_the_test_ca_has_no_findings(kit: CertificateKit, version: dict[str, Any]) -> None:
    with serve(kit, **version) as server:
        r = check(server, server_hostname="localhost", cafile=kit.ca_file)
    assert (r.status, r.findings) == ("ok", ())
    d = r.data
    expected = "TLSv1.2" if version is TLS12 else "TLSv1.3"
    assert d["protocol"] == expected
    assert d["cipher"]["bits"] >= 128 and isinstance(d["cipher"]["name"], str)
    assert d["chain_verified"] is True and d["verify_message"] == "ok" and d["verify_code"] is None
    assert d["hostname_ok"] is True and d["hostname_matched_by"] == "san"
    assert d["sans"] == ["localhost", "127.0.0.1", "::1"]
    assert d["subject"] and d["issuer"] != d["subject"] and d["self_signed"] is False
    assert ISO.match(d["not_before"]) and ISO.match(d["not_after"])
    assert d["days_to_expiry"] > 300
    assert d["sha256_fingerprint"] == hashlib.sha256(kit.server_der).hexdigest()
    assert d["spki_pin"] == spki_pin(kit.server_der)
    assert d["client_cert_requested"] is False and d["client_cert_sent"] is False
    assert d["client_cert_accepted"] is None and d["pin_matched"] is None
    assert d["chain_length"] == 1 and d["handshake_ms"] > 0
    assert d["server_hostname"] == "localhost" and d["proxy"] is None
    assert r.duration_ms > 0


def test_embedded_nexuskit_server_over_tls_directly_and_through_the_proxy(kit: CertificateKit) -> None:
    with EmbeddedServer(tls=kit.server_context()) as server, Socks5Proxy() as proxy:
        direct = check(server, server_hostname="localhost", cafile=kit.ca_file)
        tunnelled = check(server, server_hostname="localhost", cafile=kit.ca_file, proxy=proxy.url)
        tunnels = len(proxy.requests)
    for r in (direct, tunnelled):
        assert (r.status, r.findings) == ("ok", ()) and r.data["chain_verified"] is True
        assert r.data["protocol"] == "TLSv1.3" and r.data["hostname_ok"] is True
    assert tunnelled.data["proxy"] == proxy.url and tunnels == 2


def test_ip_address_is_matched_against_the_ip_sans(kit: CertificateKit) -> None:
    with serve(kit) as server:
        r = check(server, cafile=kit.ca_file)
    assert r.status == "ok" and r.data["server_hostname"] == "127.0.0.1" and r.data["hostname_ok"] is True


def test_ipv6_literal_in_brackets(kit: CertificateKit) -> None:
    with TLSEchoServer(kit.server_context(), host="::1") as server:
        r = validate(check_tls("[::1]", server.address[1], cafile=kit.ca_file, timeout=5))
    assert (r.status, r.findings) == ("ok", ()) and r.data["server_hostname"] == "::1"
    assert r.data["hostname_ok"] is True


def test_unknown_host_is_unreachable() -> None:
    r = validate(check_tls("nonexistent.invalid", 443, timeout=2))  # RFC 6761: .invalid never resolves
    assert codes(r) == ["tls.unreachable"] and "DNS resolution failed" in r.findings[0].message


def test_default_trust_store_does_not_trust_the_test_ca(kit: CertificateKit) -> None:
    with serve(kit) as server:
        r = check(server, server_hostname="localhost")
    assert codes(r) == ["tls.untrusted_chain"] and r.status == "failed"
    assert r.data["chain_verified"] is False and r.data["verify_code"] in (19, 20, 21)
    assert "system's trusted CAs" in finding(r, "tls.untrusted_chain").message
    assert r.data["hostname_ok"] is True


# --------------------------------------------------------------------------- dates
def test_expired_certificate(kit: CertificateKit) -> None:
    cert = kit.issue_server_cert("localhost", name="expired", not_after=now() - datetime.timedelta(days=3))
    with serve(kit, cert) as server:
        r = check(server, server_hostname="localhost", cafile=kit.ca_file)
    assert codes(r) == ["tls.expired"] and r.status == "failed"
    f = finding(r, "tls.expired")
    assert f.severity == "critical" and "expired 3.0 days ago" in f.message and f.recommendation
    assert -3.01 < r.data["days_to_expiry"] < -2.99
    assert r.data["chain_verified"] is False and r.data["verify_message"] == "certificate has expired"
    assert r.data["verify_code"] == 10


def test_not_yet_valid_certificate(kit: CertificateKit) -> None:
    start = now() + datetime.timedelta(days=2)
    cert = kit.issue_server_cert(
        "localhost", name="future", not_before=start, not_after=start + datetime.timedelta(days=90)
    )
    with serve(kit, cert) as server:
        r = check(server, server_hostname="localhost", cafile=kit.ca_file)
    assert codes(r) == ["tls.not_yet_valid"] and r.status == "failed"
    assert "2.0 days from now" in finding(r, "tls.not_yet_valid").message
    assert r.data["verify_code"] == 9 and r.data["chain_verified"] is False


def test_expiring_in_five_days_is_a_warning(kit: CertificateKit) -> None:
    cert = kit.issue_server_cert("localhost", name="soon", not_after=now() + datetime.timedelta(days=5))
    with serve(kit, cert) as server:
        r = check(server, server_hostname="localhost", cafile=kit.ca_file)
    assert codes(r) == ["tls.expires_soon"] and r.status == "warning"
    f = finding(r, "tls.expires_soon")
    assert f.severity == "warning" and "expires in 5.0 days" in f.message
    assert 4.9 < r.data["days_to_expiry"] <= 5.0 and r.data["chain_verified"] is True


# --------------------------------------------------------------------------- several problems at once
def test_self_signed_expired_wrong_host_reports_every_problem(kit: CertificateKit) -> None:
    past = now() - datetime.timedelta(days=40)
    cert = kit.issue_custom_cert(
        "everything-wrong", common_name="other.test", dns_names=("other.test",), not_after=past, self_signed=True
    )
    with serve(kit, cert) as server:
        r = check(server, server_hostname="localhost", cafile=kit.ca_file)
    assert set(codes(r)) == {"tls.expired", "tls.hostname_mismatch", "tls.self_signed", "tls.untrusted_chain"}
    assert r.status == "failed"
    assert finding(r, "tls.self_signed").severity == "warning"
    assert "'localhost'" in finding(r, "tls.hostname_mismatch").message
    assert "other.test" in finding(r, "tls.hostname_mismatch").message
    assert r.data["verify_code"] == 18 and r.data["verify_message"] == "self-signed certificate"
    assert r.data["self_signed"] is True and r.data["hostname_ok"] is False
    assert r.data["subject"] == r.data["issuer"] == "CN=other.test"
    assert r.data["days_to_expiry"] < -39


def test_self_signed_certificate_trusted_through_cafile_is_only_noted(kit: CertificateKit) -> None:
    cert = kit.issue_custom_cert("pinned-self", dns_names=("localhost",), self_signed=True)
    with serve(kit, cert) as server:
        r = check(server, server_hostname="localhost", cafile=cert[0])
    assert codes(r) == ["tls.self_signed"] and r.status == "ok"
    assert finding(r, "tls.self_signed").severity == "info" and r.data["chain_verified"] is True


def test_issuer_equal_to_subject_but_signed_by_another_key_is_not_self_signed(
    kit: CertificateKit, tmp_path: Any
) -> None:
    # The names say "self-signed", the signature says otherwise: only the signature check tells them apart.
    cert = ca_signed(kit, str(tmp_path), "namesake", subject_is_issuer=True)
    with serve(kit, cert) as server:
        r = check(server, server_hostname="localhost", cafile=kit.ca_file)
    assert r.data["subject"] == r.data["issuer"] and r.data["self_signed"] is False
    # OpenSSL goes by the names and calls it self-signed; the analysis checked the signature.
    assert codes(r) == ["tls.untrusted_chain"] and r.data["verify_code"] == 18


def test_chain_failing_for_another_reason_is_chain_invalid(kit: CertificateKit, tmp_path: Any) -> None:
    cert = ca_signed(kit, str(tmp_path), "client-only", client_auth_only=True)  # no serverAuth purpose
    with serve(kit, cert) as server:
        r = check(server, server_hostname="localhost", cafile=kit.ca_file)
    assert codes(r) == ["tls.chain_invalid"] and r.status == "failed"
    assert r.data["verify_code"] == 26 and "unsuitable certificate purpose" in finding(r, "tls.chain_invalid").message


def ca_signed(
    kit: CertificateKit, directory: str, name: str, *, subject_is_issuer: bool = False, client_auth_only: bool = False
) -> tuple[str, str, bytes]:
    """A leaf for localhost signed by the kit's CA: named like the CA itself, or for client authentication only."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    ca = x509.load_pem_x509_certificate(kit.ca.cert_pem.bytes())
    ca_key: Any = serialization.load_pem_private_key(kit.ca.private_key_pem.bytes(), password=None)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = ca.subject if subject_is_issuer else x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now() - datetime.timedelta(days=1))
        .not_valid_after(now() + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
    )
    if client_auth_only:
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    cert_file, key_file = f"{directory}/{name}.pem", f"{directory}/{name}.key"
    with open(cert_file, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(key_file, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    return cert_file, key_file, cert.public_bytes(serialization.Encoding.DER)


# --------------------------------------------------------------------------- host names
def test_wrong_host_only(kit: CertificateKit) -> None:
    cert = kit.issue_server_cert("db.other.test", name="wrong-host")
    with serve(kit, cert) as server:
        r = check(server, server_hostname="localhost", cafile=kit.ca_file)
    assert codes(r) == ["tls.hostname_mismatch"] and r.status == "failed"
    assert r.data["chain_verified"] is True and r.data["hostname_ok"] is False
    assert r.data["hostname_matched_by"] is None and r.data["sans"] == ["db.other.test"]


def test_cn_without_san_is_flagged_even_when_the_cn_matches(kit: CertificateKit) -> None:
    cert = kit.issue_custom_cert("cn-only", common_name="localhost")
    with serve(kit, cert) as server:
        r = check(server, server_hostname="localhost", cafile=kit.ca_file)
    assert codes(r) == ["tls.cn_only_no_san"] and r.status == "failed"
    f = finding(r, "tls.cn_only_no_san")
    assert f.severity == "critical" and "'localhost'" in f.message and "subjectAltName" in f.recommendation
    assert r.data["sans"] == [] and r.data["hostname_ok"] is True and r.data["hostname_matched_by"] == "cn"
    assert r.data["chain_verified"] is True


def test_cn_without_san_for_another_host(kit: CertificateKit) -> None:
    cert = kit.issue_custom_cert("cn-other", common_name="other.test")
    with serve(kit, cert) as server:
        r = check(server, server_hostname="localhost", cafile=kit.ca_file)
    assert codes(r) == ["tls.cn_only_no_san", "tls.hostname_mismatch"]
    assert "CN=other.test" in finding(r, "tls.hostname_mismatch").message


def test_wildcard_certificate(kit: CertificateKit) -> None:
    cert = kit.issue_custom_cert("wild", dns_names=("*.nexus.test",))
    with serve(kit, cert) as server:
        good = check(server, server_hostname="api.nexus.test", cafile=kit.ca_file)
        deep = check(server, server_hostname="a.api.nexus.test", cafile=kit.ca_file)
    assert good.status == "ok" and good.data["hostname_ok"] is True
    assert codes(deep) == ["tls.hostname_mismatch"]


@pytest.mark.parametrize(
    ("name", "dns", "ips", "expected"),
    [
        ("API.Example.COM.", ["api.example.com"], [], True),
        ("api.example.com", ["*.example.com"], [], True),
        ("example.com", ["*.example.com"], [], False),
        ("a.b.example.com", ["*.example.com"], [], False),
        ("foo.example.com", ["f*.example.com"], [], False),  # partial wildcards match nothing
        ("foo.com", ["*.com"], [], False),  # too broad
        ("x.a.example.com", ["x.*.example.com"], [], False),  # only the left-most label
        ("127.0.0.1", ["127.0.0.1"], [], False),  # an IP matches only IP entries
        ("127.0.0.1", [], ["127.0.0.1"], True),
        ("[::1]", [], ["0:0:0:0:0:0:0:1"], True),
        ("::2", [], ["not an ip", "::1"], False),
        ("bücher.example", ["xn--bcher-kva.example"], [], True),
        ("a..b", ["a..b"], [], True),
        ("\udcff.example", ["x.example"], [], False),  # not encodable: matches nothing
    ],
)
def test_match_hostname(name: str, dns: list[str], ips: list[str], expected: bool) -> None:
    assert match_hostname(name, dns, ips) is expected


# --------------------------------------------------------------------------- pins
def test_pins_match_by_public_key_certificate_hex_and_prefixed_form(kit: CertificateKit) -> None:
    digest = hashlib.sha256(kit.server_der).hexdigest()
    colons = ":".join(digest[i : i + 2] for i in range(0, 64, 2)).upper()
    with serve(kit) as server:
        for pin in (spki_pin(kit.server_der), digest, colons, "sha256-cert/" + digest):
            r = check(server, server_hostname="localhost", cafile=kit.ca_file, pins=["sha256/" + "A" * 43 + "=", pin])
            assert r.status == "ok" and r.data["pin_matched"] == pin, pin


def test_pin_mismatch_names_the_actual_pins(kit: CertificateKit) -> None:
    other = base64.b64encode(hashlib.sha256(b"another key").digest()).decode()
    with serve(kit) as server:
        r = check(server, server_hostname="localhost", cafile=kit.ca_file, pins=["sha256/" + other, "ab" * 32])
    assert codes(r) == ["tls.pin_mismatch"] and r.status == "failed"
    f = finding(r, "tls.pin_mismatch")
    assert spki_pin(kit.server_der) in f.message and hashlib.sha256(kit.server_der).hexdigest() in f.message
    assert "2 pin(s)" in f.message and r.data["pin_matched"] is None


@pytest.mark.parametrize(
    ("pins", "message"),
    [
        (["md5/abc"], "neither 'sha256/"),
        (["abcd"], "64 hex digits"),
        (["zz" * 32], "64 hex digits"),
        (["sha256/abc"], "not a SHA-256 digest"),
        ("sha256/" + "A" * 43 + "=", "not one string"),
        ([b"x"], "must be a string"),
    ],
)
def test_malformed_pins_raise_value_error_before_any_io(pins: Any, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        check_tls("127.0.0.1", 1, pins=pins)


# --------------------------------------------------------------------------- client certificates
@pytest.mark.parametrize("version", [TLS12, TLS13], ids=["TLSv1.2", "TLSv1.3"])
def test_server_requiring_a_client_certificate(kit: CertificateKit, version: dict[str, Any]) -> None:
    with serve(kit, require_client_cert=True, **version) as server:
        without = check(server, server_hostname="localhost", cafile=kit.ca_file)
        with_cert = check(
            server,
            server_hostname="localhost",
            cafile=kit.ca_file,
            client_cert=kit.client_cert_file,
            client_key=kit.client_key_file,
        )
        accepted = len(server.client_certs)
    assert codes(without) == ["tls.client_cert_required"] and without.status == "warning"
    alert = "handshake_failure" if version is TLS12 else "certificate_required"
    assert f"a {alert} alert" in finding(without, "tls.client_cert_required").message
    d = without.data
    assert d["protocol"] == ("TLSv1.2" if version is TLS12 else "TLSv1.3") and d["cipher"]["bits"] >= 128
    assert d["client_cert_requested"] is True and d["client_cert_rejection"] == alert
    assert d["client_cert_sent"] is False and d["client_cert_accepted"] is None
    # The certificate is still analysed, and the chain judged, although the server refused us.
    assert d["chain_verified"] is True and d["hostname_ok"] is True
    assert d["sha256_fingerprint"] == hashlib.sha256(kit.server_der).hexdigest()
    assert (with_cert.status, with_cert.findings) == ("ok", ())
    assert with_cert.data["client_cert_requested"] is True and with_cert.data["client_cert_accepted"] is True
    assert accepted == 2  # the looking and the verifying handshake both presented it


@pytest.mark.parametrize("version", [TLS12, TLS13], ids=["TLSv1.2", "TLSv1.3"])
def test_client_certificate_the_server_refuses(kit: CertificateKit, version: dict[str, Any]) -> None:
    cert, key = kit.issue_client_cert("expired-client", not_after=now() - datetime.timedelta(days=1))
    with serve(kit, require_client_cert=True, **version) as server:
        r = check(server, server_hostname="localhost", cafile=kit.ca_file, client_cert=cert, client_key=key)
    assert codes(r) == ["tls.client_cert_rejected"] and r.status == "failed"
    assert "certificate_expired" in finding(r, "tls.client_cert_rejected").message
    assert r.data["client_cert_accepted"] is False and r.data["client_cert_requested"] is True


def test_client_certificate_given_to_a_server_that_does_not_ask(kit: CertificateKit) -> None:
    with serve(kit) as server:
        r = check(
            server,
            server_hostname="localhost",
            cafile=kit.ca_file,
            client_cert=kit.client_cert_file,
            client_key=kit.client_key_file,
        )
        seen = list(server.client_certs)
    assert (r.status, r.findings) == ("ok", ()) and seen == []
    assert r.data["client_cert_requested"] is False
    assert r.data["client_cert_sent"] is False and r.data["client_cert_accepted"] is None


def test_optional_client_certificate_is_requested_but_not_required(kit: CertificateKit) -> None:
    ctx = kit.server_context()
    ctx.verify_mode = ssl.CERT_OPTIONAL
    ctx.load_verify_locations(cafile=kit.ca_file)
    with TLSEchoServer(ctx) as server:
        r = check(server, server_hostname="localhost", cafile=kit.ca_file)
    assert r.status == "ok" and r.data["client_cert_requested"] is True


def test_server_without_session_tickets_that_speaks_first(kit: CertificateKit) -> None:
    # No ticket tells the probe the server accepted us; its first bytes do.
    ctx = kit.server_context(**TLS13)
    ctx.num_tickets = 0

    def greet(sock: Any) -> None:
        with ctx.wrap_socket(sock, server_side=True) as tls:
            tls.sendall(b"hello")
            tls.recv(1)

    with scripted_peer(greet) as peer:
        r = check(peer, server_hostname="localhost", cafile=kit.ca_file)
    assert (r.status, r.findings) == ("ok", ()) and r.data["client_cert_requested"] is False


def test_server_without_session_tickets_that_stays_silent(kit: CertificateKit) -> None:
    # Nothing arrives after the handshake: the probe gives up after its short wait, and nothing is wrong.
    ctx = kit.server_context(**TLS13)
    ctx.num_tickets = 0
    with TLSEchoServer(ctx) as server:
        r = check(server, server_hostname="localhost", cafile=kit.ca_file)
    assert (r.status, r.findings) == ("ok", ()) and r.data["chain_verified"] is True


def test_verifying_handshake_that_fails_leaves_the_chain_unknown(kit: CertificateKit) -> None:
    ctx = kit.server_context()
    seen: list[int] = []

    def once(sock: Any) -> None:
        seen.append(1)
        if len(seen) == 1:
            with ctx.wrap_socket(sock, server_side=True) as tls:
                tls.recv(1)  # the client's goodbye

    with scripted_peer(once) as peer:
        r = check(peer, server_hostname="localhost", cafile=kit.ca_file)
    assert r.findings == () and r.data["chain_verified"] is None
    assert r.data["verify_message"].startswith("not known: the verifying handshake failed")
    assert r.data["hostname_ok"] is True and r.data["protocol"] == "TLSv1.3"


# --------------------------------------------------------------------------- a server this project did not write
@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl program")
@pytest.mark.parametrize("version", ["TLSv1.2", "TLSv1.3"])
def test_openssl_s_server_with_every_problem_at_once(kit: CertificateKit, version: str) -> None:
    past = now() - datetime.timedelta(days=10)
    cert = kit.issue_custom_cert("openssl-bad", dns_names=("other.test",), not_after=past, self_signed=True)
    with openssl_s_server(cert[0], cert[1], kit.ca_file, version=version) as port:
        without = validate(check_tls("127.0.0.1", port, server_hostname="localhost", cafile=kit.ca_file, timeout=5))
    with openssl_s_server(cert[0], cert[1], kit.ca_file, version=version) as port:
        mutual = check_tls(  # validated below
            "127.0.0.1",
            port,
            server_hostname="localhost",
            cafile=kit.ca_file,
            client_cert=kit.client_cert_file,
            client_key=kit.client_key_file,
            timeout=5,
        )
    validate(mutual)
    every = {"tls.expired", "tls.hostname_mismatch", "tls.self_signed", "tls.untrusted_chain"}
    assert set(codes(without)) == every | {"tls.client_cert_required"}
    assert without.data["protocol"] == version and without.data["client_cert_requested"] is True
    assert set(codes(mutual)) == every
    assert mutual.data["client_cert_accepted"] is True and mutual.data["client_cert_requested"] is True


# --------------------------------------------------------------------------- peers that are not TLS servers
def test_refused_port_is_unreachable() -> None:
    with refusing_port() as peer:
        r = check(peer)
    assert codes(r) == ["tls.unreachable"] and r.status == "failed"
    assert "refused" in finding(r, "tls.unreachable").message
    assert r.data["protocol"] is None and r.data["chain_verified"] is None and r.data["client_cert_requested"] is None


def test_plain_nexuskit_server_is_not_tls() -> None:
    with EmbeddedServer() as server:
        r = check(server)
    assert codes(r) == ["tls.not_tls"]
    f = finding(r, "tls.not_tls")
    assert "NexusKit protocol in plain TCP" in f.message and "tcp://" in f.recommendation


def test_peer_sending_garbage_is_not_tls() -> None:
    def garbage(sock: Any) -> None:
        sock.recv(4096)
        sock.sendall(b"\x00\xff\x13\x37 not a TLS record")

    with scripted_peer(garbage) as peer:
        r = check(peer)
    assert codes(r) == ["tls.not_tls"]
    assert "binary data that is not TLS (00 ff 13 37" in finding(r, "tls.not_tls").message


@pytest.mark.parametrize(
    ("reply", "named"),
    [
        (b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n", "HTTP ('HTTP/1.1 400 Bad Request')"),
        (b"SSH-2.0-OpenSSH_9.2\r\n", "SSH"),
        (b"220 mail.test ESMTP ready\r\n", "text '220 mail.test ESMTP ready\\r\\n'"),
        (b"\x00\x00\x00\x14\x7a\x5a\x00\x01" + bytes(16), "NexusKit frame"),
    ],
)
def test_peer_speaking_another_protocol_is_named(reply: bytes, named: str) -> None:
    def answer(sock: Any) -> None:
        sock.recv(4096)
        sock.sendall(reply)

    with scripted_peer(answer) as peer:
        r = check(peer)
    assert codes(r) == ["tls.not_tls"] and named in finding(r, "tls.not_tls").message


def test_blackholed_port_is_unreachable() -> None:
    with blackhole() as hole:
        r = check(hole, timeout=0.3)
    assert codes(r) == ["tls.unreachable"]
    assert "no TCP connection to 127.0.0.1:" in finding(r, "tls.unreachable").message
    assert "within 0.3s" in r.findings[0].message


def test_peer_closing_without_a_byte() -> None:
    with accept_and_close(read_bytes=1) as peer:
        r = check(peer)
    assert codes(r) == ["tls.handshake_failed"]
    assert "closed the connection without answering" in finding(r, "tls.handshake_failed").message


def test_stalling_peer_is_a_handshake_timeout() -> None:
    with accept_and_stall() as peer:
        r = check(peer, timeout=0.3)
    assert codes(r) == ["tls.handshake_timeout"]
    assert "within 0.3s" in finding(r, "tls.handshake_timeout").message


def test_tls_alert_during_the_handshake(kit: CertificateKit) -> None:
    # The server offers only ciphers the client does not: it ends the handshake with an alert.
    ctx = kit.server_context(**TLS12)
    ctx.set_ciphers("aNULL")
    with TLSEchoServer(ctx) as server:
        r = check(server, server_hostname="localhost")
    assert codes(r) == ["tls.handshake_failed"]
    assert "sent a TLS alert" in finding(r, "tls.handshake_failed").message


def test_echo_of_our_own_client_hello_fails_the_handshake() -> None:
    def echo(sock: Any) -> None:
        sock.sendall(sock.recv(4096))
        sock.recv(4096)

    with scripted_peer(echo) as peer:
        r = check(peer)
    assert codes(r) == ["tls.handshake_failed"]


def test_server_speaking_only_tls_1_1_is_a_weak_protocol(kit: CertificateKit) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx = kit.server_context(min_version=ssl.TLSVersion.TLSv1, max_version=ssl.TLSVersion.TLSv1_1)
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    with TLSEchoServer(ctx) as server:
        r = check(server, server_hostname="localhost", cafile=kit.ca_file)
    assert codes(r) == ["tls.weak_protocol"] and r.data["protocol"] == "TLSv1.1"
    assert r.data["chain_verified"] is True and "RFC 8996" in finding(r, "tls.weak_protocol").message


# --------------------------------------------------------------------------- through a SOCKS5 proxy
def test_through_the_socks5_proxy(kit: CertificateKit) -> None:
    with serve(kit) as server, Socks5Proxy() as proxy:
        r = check(server, server_hostname="localhost", cafile=kit.ca_file, proxy=proxy.url)
        tunnels = len(proxy.requests)
    assert (r.status, r.findings) == ("ok", ()) and r.data["proxy"] == proxy.url
    assert r.data["chain_verified"] is True and tunnels == 2


def test_proxy_that_cannot_reach_the_target() -> None:
    with refusing_port() as peer, Socks5Proxy() as proxy:
        r = check(peer, proxy=proxy.url)
    assert codes(r) == ["tls.unreachable"]
    assert "connection_refused" in finding(r, "tls.unreachable").message or "refused" in r.findings[0].message


def test_proxy_that_is_down() -> None:
    with refusing_port() as proxy_port:
        r = validate(check_tls("127.0.0.1", 443, proxy=f"socks5://127.0.0.1:{proxy_port.port}", timeout=2))
    assert codes(r) == ["tls.unreachable"]
    assert "cannot reach the SOCKS5 proxy" in finding(r, "tls.unreachable").message


def test_proxy_that_never_answers() -> None:
    with accept_and_stall() as proxy_port:
        r = validate(check_tls("127.0.0.1", 443, proxy=f"socks5://127.0.0.1:{proxy_port.port}", timeout=0.3))
    assert codes(r) == ["tls.unreachable"]
    assert "tunnel to 127.0.0.1:443" in finding(r, "tls.unreachable").message


def test_plain_nexuskit_server_through_the_proxy_is_not_tls() -> None:
    with EmbeddedServer() as server, Socks5Proxy() as proxy:
        r = check(server, proxy=proxy.url)
    assert codes(r) == ["tls.not_tls"]


# --------------------------------------------------------------------------- arguments
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"host": ""}, "host must be"),
        ({"port": 0}, "port must be"),
        ({"port": True}, "port must be"),
        ({"timeout": 0}, "timeout must be"),
        ({"timeout": float("nan")}, "timeout must be"),
        ({"server_hostname": ".x"}, "server_hostname must be"),
        ({"server_hostname": "a..b"}, "not a valid host name"),
        ({"client_key": "k.pem"}, "client_key needs client_cert"),
        ({"client_cert": "/nonexistent/c.pem"}, "cannot load the client certificate"),
        ({"cafile": "/nonexistent/ca.pem"}, "cannot load the CA file"),
    ],
)
def test_bad_arguments_raise_value_error(kwargs: dict[str, Any], message: str) -> None:
    args: dict[str, Any] = {"host": "127.0.0.1", "port": 1}
    args.update(kwargs)
    host, port = args.pop("host"), args.pop("port")
    with pytest.raises(ValueError, match=re.escape(message)):
        check_tls(host, port, **args)


def test_bad_proxy_url_raises() -> None:
    with pytest.raises(InvalidURL, match="only socks5"):
        check_tls("127.0.0.1", 1, proxy="http://proxy:3128")


# --------------------------------------------------------------------------- internals with no live peer
def test_unparsable_certificate_is_a_finding() -> None:
    rep = tls_check._Report()
    assert tls_check._analyse(b"not a certificate", "h", "h:1", rep, now()) is None
    assert [f.code for f in rep.findings] == ["tls.bad_certificate"]
    assert rep.data["sha256_fingerprint"] == hashlib.sha256(b"not a certificate").hexdigest()


def test_certificate_message_parsing_stops_at_a_truncated_entry() -> None:
    der = b"\x30\x03\x02\x01\x01"
    entry = len(der).to_bytes(3, "big") + der
    tls12 = b"\x0b\x00\x00\x00" + (2 * len(entry)).to_bytes(3, "big") + entry + entry[:-2]
    assert tls_check._certificates(tls12, tls13=False) == [der]
    tls13 = b"\x0b\x00\x00\x00" + b"\x00" + (len(entry) + 2).to_bytes(3, "big") + entry + b"\x00\x00"
    assert tls_check._certificates(tls13, tls13=True) == [der]


# --------------------------------------------------------------------------- the same, after patch_all()
def test_module_passes_under_patch_all() -> None:
    run = run_module_patched(__file__)
    assert run.returncode == 0, run.report()
