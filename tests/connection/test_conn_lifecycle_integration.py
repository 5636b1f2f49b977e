"""Issue 3 end to end: Client over TLS, through SOCKS5, TLS through SOCKS5, phase timings."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from nexus_green import Client
from nexus_green.errors import CertificateUntrusted, HostnameMismatch, PinMismatch, ProxyError
from nexus_green.events import EventBus
from nexus_green.testing import EmbeddedServer
from nexus_green.testing.socks5_proxy import Socks5Proxy
from nexus_green.testing.tls import CertificateKit, make_test_certificates
from nexus_green.transport.tls import TLSConfig, cert_pin

pytestmark = pytest.mark.usefixtures("leakcheck")


@pytest.fixture(scope="module")
def certs() -> Iterator[CertificateKit]:
    with make_test_certificates() as kit:
        yield kit


@pytest.fixture
def tls_server(certs: CertificateKit) -> Iterator[EmbeddedServer]:
    with EmbeddedServer(tls=certs.server_context()) as s:
        yield s


def test_tls_client_round_trip_with_phase_timings(tls_server: EmbeddedServer, certs: CertificateKit) -> None:
    bus = EventBus()
    done: list[Any] = []
    bus.subscribe(done.append, prefix="connect.complete")
    assert tls_server.url.startswith("tls://")
    with Client(tls_server.url, tls=certs.client_config(), heartbeat_interval=None, bus=bus) as c:
        assert c.request(b"secure", fid=1).body == b"secure"
        conn = c.pool.connections[0]
        assert conn.last_connect is not None
        assert set(conn.last_connect.phases) == {"dns", "tcp", "tls"}
    assert set(done[0].attrs["phases"]) == {"dns", "tcp", "tls"}


def test_tls_default_config_rejects_a_private_ca(tls_server: EmbeddedServer) -> None:
    with Client(tls_server.url, heartbeat_interval=None) as c:
        with pytest.raises(CertificateUntrusted, match="127.0.0.1"):
            c.request(b"x", fid=1)


def test_tls_hostname_mismatch(tls_server: EmbeddedServer, certs: CertificateKit) -> None:
    with Client(tls_server.url, tls=certs.client_config(server_hostname="other.example"), heartbeat_interval=None) as c:
        with pytest.raises(HostnameMismatch):
            c.request(b"x", fid=1)


def test_tls_pinning(tls_server: EmbeddedServer, certs: CertificateKit) -> None:
    good = certs.client_config(pins=(cert_pin(certs.server_der),))
    with Client(tls_server.url, tls=good, heartbeat_interval=None) as c:
        assert c.request(b"pinned", fid=1).body == b"pinned"
    bad = certs.client_config(pins=("sha256-cert/" + "00" * 32,))
    with Client(tls_server.url, tls=bad, heartbeat_interval=None) as c:
        with pytest.raises(PinMismatch):
            c.request(b"x", fid=1)


def test_through_socks5_proxy_with_auth() -> None:
    bus = EventBus()
    done: list[Any] = []
    bus.subscribe(done.append, prefix="connect.complete")
    with EmbeddedServer() as server, Socks5Proxy(username="u", password="p") as proxy:
        proxy_url = f"socks5://u:p@127.0.0.1:{proxy.address[1]}"
        with Client(server.url, proxy=proxy_url, heartbeat_interval=None, bus=bus) as c:
            assert c.request(b"tunneled", fid=1).body == b"tunneled"
        assert proxy.tunnels_opened == 1
    assert set(done[0].attrs["phases"]) == {"dns", "tcp", "socks5"}


def test_tls_through_socks5(tls_server: EmbeddedServer, certs: CertificateKit) -> None:
    with Socks5Proxy() as proxy:
        with Client(tls_server.url, tls=certs.client_config(), proxy=proxy.url, heartbeat_interval=None) as c:
            assert c.request(b"both", fid=1).body == b"both"
            phases = c.pool.connections[0].last_connect.phases  # type: ignore[union-attr]
            assert set(phases) == {"dns", "tcp", "socks5", "tls"}


def test_proxy_that_refuses() -> None:
    with EmbeddedServer() as server, Socks5Proxy(force_reply=0x05) as proxy:
        with Client(server.url, proxy=proxy.url, heartbeat_interval=None) as c:
            with pytest.raises(ProxyError) as info:
                c.request(b"x", fid=1)
            assert info.value.reason == "connection_refused"


def test_tls_option_on_tcp_url_upgrades(tls_server: EmbeddedServer, certs: CertificateKit) -> None:
    url = tls_server.url.replace("tls://", "tcp://")
    with Client(url, tls=certs.client_config(), heartbeat_interval=None) as c:
        assert c.request(b"up", fid=1).body == b"up"
    assert isinstance(certs.client_config(), TLSConfig)
