"""The TLS test kit: throw-away certificates and the echo server."""

from __future__ import annotations

import os
import ssl
from pathlib import Path

import pytest
from gevent import socket

from nexus_green.testing.tls import TLSEchoServer, make_test_certificates
from nexus_green.transport.tls import wrap

pytestmark = pytest.mark.usefixtures("leakcheck")


def test_own_directory_is_kept(tmp_path: Path) -> None:
    kit = make_test_certificates(str(tmp_path), hostnames=("svc.test",))
    kit.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "ca.pem",
        "client.key",
        "client.pem",
        "server.key",
        "server.pem",
    ]
    cert = ssl._ssl._test_decode_cert(kit.server_cert_file)  # type: ignore[attr-defined]
    assert cert["subjectAltName"] == (("DNS", "svc.test"),)


def test_temporary_directory_is_removed() -> None:
    with make_test_certificates() as kit:
        directory = kit.directory
        assert os.path.isfile(kit.client_key_file)
        # the server chain file holds the leaf; the kit's DER is that leaf
        pem = Path(kit.server_cert_file).read_text()
        assert ssl.PEM_cert_to_DER_cert(pem) == kit.server_der
    assert not os.path.exists(directory)
    kit.close()  # idempotent


def test_client_config_overrides() -> None:
    with make_test_certificates() as kit:
        cfg = kit.client_config(cert_file=None, key_file=None, min_version="TLSv1.3")
        assert (cfg.ca_file, cfg.cert_file, cfg.min_version) == (kit.ca_file, None, "TLSv1.3")


def test_echo_server_counts_failed_handshakes() -> None:
    with make_test_certificates() as kit, TLSEchoServer(kit.server_context()) as server:
        plain = socket.create_connection(server.address, timeout=5)
        plain.sendall(b"GET / HTTP/1.0\r\n\r\n")
        try:
            plain.recv(100)  # an alert, EOF or a reset: either way the server gave up on this one
        except ConnectionResetError:
            pass
        plain.close()
        good = wrap(socket.create_connection(server.address, timeout=5), kit.client_config(), "localhost", 5.0)
        good.sendall(b"ok")
        assert good.recv(2) == b"ok"
        good.close()
    assert server.handshake_failures == 1
    assert server.connections == 2
    assert server.client_certs == []  # no client certificate was requested
