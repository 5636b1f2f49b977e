"""The Socks5Proxy test server: relaying, counts, bad clients, forced replies, clean stop."""

from __future__ import annotations

import errno
import ipaddress
import socket as stdsocket
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import gevent
import pytest
from gevent import socket
from gevent.server import StreamServer

from nexus_green.greenlets import live_greenlets
from nexus_green.testing.socks5_proxy import ProxyRequest, Socks5Proxy, _reply_for
from nexus_green.testing.tls import TLSEchoServer
from nexus_green.transport.socks5 import open_tunnel

pytestmark = pytest.mark.usefixtures("leakcheck")


@contextmanager
def client(address: tuple[str, int]) -> Iterator[Any]:
    s = socket.create_connection(address, timeout=5)
    try:
        yield s
    finally:
        s.close()


def recv_exactly(s: Any, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            break
        buf += chunk
    return buf


def recv_all(s: Any) -> bytes:
    """Everything until the peer closes; a reset (closing with unread data) also ends it."""
    buf = b""
    while True:
        try:
            chunk = s.recv(65536)
        except ConnectionResetError:
            return buf
        if not chunk:
            return buf
        buf += chunk


def tunnel_to(s: Any, port: int, host: str = "127.0.0.1") -> tuple[str, int]:
    return open_tunnel(
        s, target_host=host, target_port=port, username=None, password=None, remote_dns=True, proxy_label="p"
    )


def settle(check: Any, timeout: float = 2.0) -> bool:
    with gevent.Timeout(timeout, False):
        while not check():
            gevent.sleep(0.01)
        return True
    return False


def test_counts_and_half_close_propagation() -> None:
    with TLSEchoServer() as echo, Socks5Proxy() as proxy:
        assert "listening" in repr(proxy)
        with client(proxy.address) as s:
            tunnel_to(s, echo.address[1])
            assert settle(lambda: proxy.tunnels_active == 1)
            s.sendall(b"a" * 200_000)
            s.shutdown(stdsocket.SHUT_WR)  # EOF travels through; the echo server then closes
            assert recv_all(s) == b"a" * 200_000
        assert settle(lambda: proxy.tunnels_active == 0)
        with client(proxy.address) as s:
            tunnel_to(s, echo.address[1])
        assert settle(lambda: proxy.tunnels_active == 0)
        assert proxy.tunnels_opened == 2
        assert [r.reply for r in proxy.requests] == [0, 0]
        assert repr(proxy) == "<Socks5Proxy listening opened=2 active=0>"
    assert "stopped" in repr(proxy)


def test_stop_closes_active_tunnels_and_leaves_no_greenlets() -> None:
    with TLSEchoServer() as echo:
        proxy = Socks5Proxy().start()
        with client(proxy.address) as s1, client(proxy.address) as s2, client(proxy.address) as idle:
            tunnel_to(s1, echo.address[1])
            tunnel_to(s2, echo.address[1])
            idle.sendall(b"\x05")  # a client stuck in the middle of its greeting
            assert settle(lambda: proxy.tunnels_active == 2)
            assert len([g for g in live_greenlets() if "socks5-proxy" in g.name]) == 4
            proxy.stop()
            assert proxy.tunnels_active == 0
            assert recv_all(s1) == b"" and recv_all(idle) == b""
            assert not [g for g in live_greenlets() if "socks5-proxy" in g.name]
        proxy.stop()  # idempotent


def test_stop_before_start_is_a_no_op() -> None:
    Socks5Proxy().stop()


def test_upstream_reset_closes_the_client_side() -> None:
    def rst_after_data(sock: Any, addr: Any) -> None:
        sock.recv(10)
        sock.setsockopt(stdsocket.SOL_SOCKET, stdsocket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()

    target = StreamServer(("127.0.0.1", 0), rst_after_data)
    target.start()
    try:
        with Socks5Proxy() as proxy, client(proxy.address) as s:
            tunnel_to(s, target.address[1])
            s.sendall(b"hello")
            assert recv_all(s) == b""
            assert settle(lambda: proxy.tunnels_active == 0)
    finally:
        target.stop(timeout=1)


def test_force_reply_can_change_at_run_time() -> None:
    with TLSEchoServer() as echo, Socks5Proxy() as proxy:
        proxy.force_reply = 0x05
        with client(proxy.address) as s:
            with pytest.raises(Exception, match="connection refused"):
                tunnel_to(s, echo.address[1])
        proxy.force_reply = None
        with client(proxy.address) as s:
            tunnel_to(s, echo.address[1])
        assert [r.reply for r in proxy.requests] == [5, 0]
        assert proxy.requests[0] == ProxyRequest(atyp="ipv4", host="127.0.0.1", port=echo.address[1], reply=5)


def raw_request(proxy: Socks5Proxy, request: bytes, *, greeting: bytes = b"\x05\x01\x00") -> bytes:
    with client(proxy.address) as s:
        s.sendall(greeting)
        method = recv_exactly(s, 2)
        if method != b"\x05\x00":
            return method
        s.sendall(request)
        return recv_all(s)


def test_unsupported_command_gets_reply_7() -> None:
    with Socks5Proxy() as proxy:
        reply = raw_request(proxy, b"\x05\x02\x00\x01\x7f\x00\x00\x01\x00\x50")  # BIND
        assert reply[:2] == b"\x05\x07" and len(reply) == 10
        assert proxy.requests[0].reply == 7


def test_unknown_address_type_gets_reply_8() -> None:
    with Socks5Proxy() as proxy:
        assert raw_request(proxy, b"\x05\x01\x00\x09")[:2] == b"\x05\x08"
        assert proxy.requests == []


@pytest.mark.parametrize(
    "greeting,request_,expected",
    [
        (b"\x04\x01\x00", b"", b""),  # SOCKS4 greeting: closed
        (b"\x05\x01\x02", b"", b"\x05\xff"),  # only user/pass offered to a no-auth proxy
        (b"\x05\x01\x00", b"\x04\x01\x00\x01", b""),  # bad request version: closed
        (b"\x05\x01\x00", b"\x05\x01\x00\x03\x02\xff\xfe\x00\x50", b""),  # a name that is not IDNA: closed
        (b"\x05\x01\x00", b"\x05\x01", b""),  # client gives up half-way
    ],
)
def test_misbehaving_clients_are_closed(greeting: bytes, request_: bytes, expected: bytes) -> None:
    with Socks5Proxy() as proxy:
        with client(proxy.address) as s:
            s.sendall(greeting)
            if request_:
                assert recv_exactly(s, 2) == b"\x05\x00"
                s.sendall(request_)
                if request_ == b"\x05\x01":
                    s.shutdown(stdsocket.SHUT_WR)
            assert recv_all(s) == expected
        assert proxy.tunnels_opened == 0


def test_auth_with_bad_subnegotiation_version_is_refused() -> None:
    with Socks5Proxy(username="u", password="p") as proxy, client(proxy.address) as s:
        s.sendall(b"\x05\x01\x02")
        assert recv_exactly(s, 2) == b"\x05\x02"
        s.sendall(b"\x05\x01u\x01p")
        assert recv_all(s) == b"\x01\x01"
        assert proxy.auth_failures == 1


def test_url_and_credentials_validation() -> None:
    with pytest.raises(ValueError, match="both username and password"):
        Socks5Proxy(username="u")
    with Socks5Proxy(username="u", password="p") as proxy:
        assert proxy.url == f"socks5://u:p@127.0.0.1:{proxy.address[1]}"


@pytest.mark.parametrize(
    "exc,code",
    [
        (stdsocket.gaierror(-2, "unknown"), 0x04),
        (ConnectionRefusedError(errno.ECONNREFUSED, "refused"), 0x05),
        (TimeoutError("timed out"), 0x06),
        (OSError(errno.ENETUNREACH, "net"), 0x03),
        (OSError(errno.EHOSTUNREACH, "host"), 0x04),
        (OSError(errno.EACCES, "denied"), 0x01),
    ],
)
def test_connect_errors_map_to_reply_codes(exc: OSError, code: int) -> None:
    assert _reply_for(exc) == code


def test_ipv6_bound_address_in_reply() -> None:
    with TLSEchoServer(host="::1") as echo6, Socks5Proxy() as proxy, client(proxy.address) as s:
        s.sendall(b"\x05\x01\x00")
        assert recv_exactly(s, 2) == b"\x05\x00"
        s.sendall(b"\x05\x01\x00\x04" + ipaddress.IPv6Address("::1").packed + echo6.address[1].to_bytes(2, "big"))
        reply = recv_exactly(s, 22)
        assert reply[:4] == b"\x05\x00\x00\x04" and reply[4:20] == ipaddress.IPv6Address("::1").packed
