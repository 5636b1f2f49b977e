"""SOCKS5 at the transport level: proxy URLs, and open_tunnel against real and scripted proxies."""

from __future__ import annotations

import socket as stdsocket
import struct
from collections.abc import Iterator
from contextlib import closing
from typing import Any

import gevent
import pytest
from gevent import socket

from nexus_green.errors import (
    ConfigurationError,
    ConnectionLost,
    DNSError,
    HandshakeTimeout,
    InvalidURL,
    ProxyError,
)
from nexus_green.testing.scripted import scripted_peer
from nexus_green.testing.socks5_proxy import Socks5Proxy
from nexus_green.testing.tls import TLSEchoServer
from nexus_green.transport import socks5 as socks5_transport
from nexus_green.transport.socks5 import ProxyConfig, open_tunnel, parse_proxy_url

pytestmark = pytest.mark.usefixtures("leakcheck")


# --------------------------------------------------------------------- URLs
@pytest.mark.parametrize(
    "url,expected",
    [
        ("socks5://127.0.0.1:1080", ("127.0.0.1", 1080, None, None, True)),
        ("socks5h://proxy.example:9050", ("proxy.example", 9050, None, None, True)),
        ("SOCKS5://Proxy.Example", ("proxy.example", 1080, None, None, True)),
        ("socks5://[::1]:1081/", ("::1", 1081, None, None, True)),
        ("socks5://us%3Aer:p%40ss%3Aword@h:1", ("h", 1, "us:er", "p@ss:word", True)),
        ("socks5://user:@h:1", ("h", 1, "user", "", True)),
        ("  socks5://h:2  ", ("h", 2, None, None, True)),
    ],
)
def test_parse_proxy_url(url: str, expected: tuple) -> None:
    cfg = parse_proxy_url(url)
    assert (cfg.host, cfg.port, cfg.username, cfg.password, cfg.remote_dns) == expected


def test_remote_dns_option() -> None:
    assert parse_proxy_url("socks5://h:1", remote_dns=False).remote_dns is False
    assert parse_proxy_url("socks5h://h:1", remote_dns=True).remote_dns is True
    with pytest.raises(ConfigurationError, match="socks5h:// means remote DNS"):
        parse_proxy_url("socks5h://h:1", remote_dns=False)


@pytest.mark.parametrize(
    "url,text",
    [
        ("http://proxy:3128", "scheme 'http'; only socks5:// and socks5h://"),
        ("socks4://proxy:1080", "scheme 'socks4'"),
        ("proxy:1080", "scheme 'proxy'"),
        ("//proxy:1080", "has no scheme"),
        ("socks5://:1080", "has no host"),
        ("socks5://", "has no host"),
        ("socks5://h:1080/path", "must not have a path, query or fragment"),
        ("socks5://h:1080?x=1", "must not have a path"),
        ("socks5://h:1080#frag", "must not have a path"),
        ("socks5://h:99999", "malformed"),
        ("socks5://h:port", "malformed"),
        ("socks5://h:0", "has port 0"),
        ("socks5://user@h:1", "has a username but no password"),
        ("socks5://:pw@h:1", "has an empty username"),
        ("socks5://" + "u" * 256 + ":p@h:1", "username must be 1..255 bytes"),
        ("socks5://[::1:1080", "malformed"),
    ],
)
def test_bad_proxy_urls(url: str, text: str) -> None:
    with pytest.raises(InvalidURL, match=text):
        parse_proxy_url(url)


def test_bad_url_errors_never_show_the_password() -> None:
    for url in ("http://me:hunter2@h:1", "socks5://me:hunter2@h:99999", "socks5://me:hunter2@h/x"):
        with pytest.raises(InvalidURL) as info:
            parse_proxy_url(url)
        assert "hunter2" not in str(info.value) and "me:***@" in str(info.value)


def test_non_string_url() -> None:
    with pytest.raises(InvalidURL, match="must be a string, not int"):
        parse_proxy_url(1080)  # type: ignore[arg-type]


def test_proxy_config_repr_and_label_hide_the_password() -> None:
    cfg = parse_proxy_url("socks5://alice:hunter2@[::1]:1080")
    assert cfg.label == "socks5://[::1]:1080"
    assert "hunter2" not in repr(cfg) and "alice:***@[::1]:1080" in repr(cfg)
    assert repr(ProxyConfig(host="h")) == "ProxyConfig(url='socks5://h:1080', remote_dns=True)"


@pytest.mark.parametrize(
    "kwargs,text",
    [
        ({"host": ""}, "host must be a non-empty string"),
        ({"host": "h", "port": 0}, "port must be an integer in 1..65535"),
        ({"host": "h", "port": True}, "port"),
        ({"host": "h", "username": "u"}, "together"),
        ({"host": "h", "username": "", "password": "p"}, "username must be 1..255"),
        ({"host": "h", "username": "u", "password": "p" * 256}, "password must be at most 255"),
    ],
)
def test_bad_proxy_config(kwargs: dict, text: str) -> None:
    with pytest.raises(ConfigurationError, match=text):
        ProxyConfig(**kwargs)


def test_proxy_config_is_frozen() -> None:
    cfg = ProxyConfig(host="h")
    with pytest.raises(AttributeError):
        cfg.port = 1  # type: ignore[misc]


# --------------------------------------------------------------------- tunnels through the test proxy
@pytest.fixture
def echo() -> Iterator[TLSEchoServer]:
    with TLSEchoServer() as server:
        yield server


def proxy_socket(address: tuple[str, int]) -> closing[Any]:
    return closing(socket.create_connection(address, timeout=5))


def tunnel(sock: Any, host: str, port: int, *, user: str | None = None, pw: str | None = None, **kw: Any) -> tuple:
    kw.setdefault("remote_dns", True)
    return open_tunnel(
        sock, target_host=host, target_port=port, username=user, password=pw, proxy_label="test-proxy", **kw
    )


def roundtrip(sock: Any, payload: bytes) -> bytes:
    sock.sendall(payload)
    got = b""
    while len(got) < len(payload):
        chunk = sock.recv(65536)
        assert chunk, "tunnel closed early"
        got += chunk
    return got


def test_ipv4_target_no_auth_relays_both_ways(echo: TLSEchoServer) -> None:
    with Socks5Proxy() as proxy, proxy_socket(proxy.address) as s:
        bound = tunnel(s, "127.0.0.1", echo.address[1])
        assert bound[0] == "127.0.0.1" and bound[1] > 0
        payload = bytes(range(256)) * 1000
        assert roundtrip(s, payload) == payload
        assert (proxy.tunnels_opened, proxy.tunnels_active) == (1, 1)
        assert proxy.requests[0].atyp == "ipv4" and proxy.requests[0].reply == 0


def test_ipv6_target() -> None:
    with TLSEchoServer(host="::1") as echo6, Socks5Proxy() as proxy, proxy_socket(proxy.address) as s:
        bound = tunnel(s, "::1", echo6.address[1])
        assert bound[0] == "::1"
        assert roundtrip(s, b"six") == b"six"
        assert proxy.requests[0].atyp == "ipv6"


def test_proxy_listening_on_ipv6(echo: TLSEchoServer) -> None:
    with Socks5Proxy(host="::1") as proxy, proxy_socket(proxy.address) as s:
        tunnel(s, "127.0.0.1", echo.address[1])
        assert roundtrip(s, b"x") == b"x"
        assert proxy.url == f"socks5://[::1]:{proxy.address[1]}"
        assert parse_proxy_url(proxy.url).host == "::1"


def test_domain_target_resolved_by_the_proxy(echo: TLSEchoServer) -> None:
    with Socks5Proxy() as proxy, proxy_socket(proxy.address) as s:
        tunnel(s, "localhost", echo.address[1], remote_dns=True)
        assert roundtrip(s, b"by name") == b"by name"
        req = proxy.requests[0]
        assert (req.atyp, req.host, req.port) == ("domain", "localhost", echo.address[1])


def test_domain_target_resolved_locally(echo: TLSEchoServer) -> None:
    with Socks5Proxy() as proxy, proxy_socket(proxy.address) as s:
        tunnel(s, "localhost", echo.address[1], remote_dns=False)
        assert roundtrip(s, b"by ip") == b"by ip"
        assert proxy.requests[0].atyp in ("ipv4", "ipv6")


def test_local_dns_failure_is_a_dns_error(monkeypatch: pytest.MonkeyPatch) -> None:
    real = socks5_transport.gsocket.getaddrinfo

    def fail(host: str, *args: Any) -> Any:
        if host == "nowhere.test":
            raise stdsocket.gaierror(-2, "Name or service not known")
        return real(host, *args)

    monkeypatch.setattr(socks5_transport.gsocket, "getaddrinfo", fail)
    with Socks5Proxy() as proxy, proxy_socket(proxy.address) as s:
        with pytest.raises(
            DNSError, match=r"resolving 'nowhere.test' for SOCKS5 proxy test-proxy \(remote_dns=False\)"
        ):
            tunnel(s, "nowhere.test", 80, remote_dns=False)
        assert proxy.requests == []


def test_username_password(echo: TLSEchoServer) -> None:
    with Socks5Proxy(username="alice", password="s3cret") as proxy, proxy_socket(proxy.address) as s:
        tunnel(s, "127.0.0.1", echo.address[1], user="alice", pw="s3cret")
        assert roundtrip(s, b"authed") == b"authed"


def test_wrong_password_is_auth_rejected() -> None:
    with Socks5Proxy(username="alice", password="s3cret") as proxy, proxy_socket(proxy.address) as s:
        with pytest.raises(ProxyError, match="SOCKS5 proxy test-proxy rejected the username") as info:
            tunnel(s, "127.0.0.1", 1, user="alice", pw="wrong")
        assert info.value.reason == "auth_rejected"
        assert info.value.retryable is False
        assert isinstance(info.value.__cause__, ProxyError)
        assert proxy.auth_failures == 1 and proxy.tunnels_opened == 0


def test_missing_credentials_is_no_acceptable_methods() -> None:
    with Socks5Proxy(username="alice", password="s3cret") as proxy, proxy_socket(proxy.address) as s:
        with pytest.raises(ProxyError, match="may require a username and password") as info:
            tunnel(s, "127.0.0.1", 1)
        assert info.value.reason == "no_acceptable_methods"


def test_closed_target_port_is_connection_refused() -> None:
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    port = free.getsockname()[1]
    free.close()  # nothing listens there now
    with Socks5Proxy() as proxy, proxy_socket(proxy.address) as s:
        with pytest.raises(
            ProxyError, match=f"test-proxy could not connect to 127.0.0.1:{port}: connection refused"
        ) as e:
            tunnel(s, "127.0.0.1", port)
        assert e.value.reason == "connection_refused" and e.value.retryable is True
        assert proxy.requests[0].reply == 0x05


def test_unresolvable_name_on_the_proxy_is_host_unreachable(monkeypatch: pytest.MonkeyPatch) -> None:
    from nexus_green.testing import socks5_proxy as proxy_module

    real = proxy_module.gsocket.create_connection

    def fail(address: tuple[str, int], *args: Any, **kwargs: Any) -> Any:
        if address[0] == "nowhere.test":
            raise stdsocket.gaierror(-2, "Name or service not known")
        return real(address, *args, **kwargs)

    monkeypatch.setattr(proxy_module.gsocket, "create_connection", fail)
    with Socks5Proxy() as proxy, proxy_socket(proxy.address) as s:
        with pytest.raises(ProxyError) as e:
            tunnel(s, "nowhere.test", 80)
        assert e.value.reason == "host_unreachable"


@pytest.mark.parametrize(
    "code,reason",
    [
        (0x01, "general_failure"),
        (0x02, "not_allowed"),
        (0x03, "network_unreachable"),
        (0x04, "host_unreachable"),
        (0x05, "connection_refused"),
        (0x06, "ttl_expired"),
        (0x07, "command_not_supported"),
        (0x08, "address_type_not_supported"),
    ],
)
def test_forced_reply_codes(code: int, reason: str) -> None:
    with Socks5Proxy(force_reply=code) as proxy, proxy_socket(proxy.address) as s:
        with pytest.raises(ProxyError) as e:
            tunnel(s, "localhost", 7)
        assert e.value.reason == reason
        assert "test-proxy" in str(e.value) and "localhost:7" in str(e.value)


def test_allow_filter_is_not_allowed(echo: TLSEchoServer) -> None:
    with Socks5Proxy(allow=lambda host, port: port == echo.address[1]) as proxy:
        with proxy_socket(proxy.address) as s:
            with pytest.raises(ProxyError) as e:
                tunnel(s, "127.0.0.1", echo.address[1] + 1 if echo.address[1] < 65535 else 1)
            assert e.value.reason == "not_allowed"
        with proxy_socket(proxy.address) as s:
            tunnel(s, "127.0.0.1", echo.address[1])


# --------------------------------------------------------------------- scripted misbehaving proxies


def read_greeting(sock: Any) -> bytes:
    data = b""
    while len(data) < 3:
        data += sock.recv(3 - len(data))
    return data


def test_proxy_closing_mid_handshake_is_malformed_reply() -> None:
    def script(sock: Any) -> None:
        read_greeting(sock)
        sock.sendall(b"\x05")  # half a method reply, then EOF

    with scripted_peer(script) as addr, proxy_socket(addr) as s:
        with pytest.raises(ProxyError, match="closed the connection in the middle of the handshake") as e:
            tunnel(s, "127.0.0.1", 1)
        assert e.value.reason == "malformed_reply"
        assert "AWAIT_METHOD" in str(e.value) and "test-proxy" in str(e.value)


def test_proxy_closing_after_failed_reply_code_only() -> None:
    def script(sock: Any) -> None:
        read_greeting(sock)
        sock.sendall(b"\x05\x00")
        sock.recv(64)
        sock.sendall(b"\x05\x04")  # reply code only, then EOF

    with scripted_peer(script) as addr, proxy_socket(addr) as s:
        with pytest.raises(ProxyError) as e:
            tunnel(s, "127.0.0.1", 1)
        assert e.value.reason == "host_unreachable"


def test_malformed_reply_from_the_state_machine_names_the_proxy() -> None:
    def script(sock: Any) -> None:
        read_greeting(sock)
        sock.sendall(b"\x05\x00")
        sock.recv(64)
        sock.sendall(b"\x05\x00\x00\x09")

    with scripted_peer(script) as addr, proxy_socket(addr) as s:
        with pytest.raises(ProxyError, match="unknown address type") as e:
            tunnel(s, "127.0.0.1", 1)
        assert e.value.reason == "malformed_reply"
        assert str(e.value).startswith("SOCKS5 proxy test-proxy (tunnel to 127.0.0.1:1): ")


def test_silent_proxy_times_out_with_overall_timeout() -> None:
    done = gevent.event.Event()

    def script(sock: Any) -> None:
        done.wait(5)

    with scripted_peer(script) as addr, proxy_socket(addr) as s:
        with pytest.raises(HandshakeTimeout, match=r"test-proxy .*did not finish within 0.05s") as e:
            tunnel(s, "127.0.0.1", 1, timeout=0.05)
        assert e.value.retryable is True
        done.set()


def test_silent_proxy_times_out_with_socket_timeout() -> None:
    done = gevent.event.Event()

    def script(sock: Any) -> None:
        done.wait(5)

    with scripted_peer(script) as addr, proxy_socket(addr) as s:
        s.settimeout(0.05)
        with pytest.raises(HandshakeTimeout, match="handshake timed out"):
            tunnel(s, "127.0.0.1", 1)
        done.set()


def test_foreign_timeout_is_not_swallowed() -> None:
    done = gevent.event.Event()

    def script(sock: Any) -> None:
        done.wait(5)

    with scripted_peer(script) as addr, proxy_socket(addr) as s:
        with pytest.raises(gevent.Timeout):
            with gevent.Timeout(0.05):
                tunnel(s, "127.0.0.1", 1, timeout=10)
        done.set()


def test_reset_during_handshake_is_connection_lost() -> None:
    def script(sock: Any) -> None:
        read_greeting(sock)
        # SO_LINGER 0: close sends RST instead of FIN
        sock.setsockopt(stdsocket.SOL_SOCKET, stdsocket.SO_LINGER, struct.pack("ii", 1, 0))

    with scripted_peer(script) as addr, proxy_socket(addr) as s:
        with pytest.raises(ConnectionLost, match="test-proxy .*connection lost during the handshake"):
            tunnel(s, "127.0.0.1", 1)


def test_bad_arguments_fail_before_any_io() -> None:
    with pytest.raises(ConfigurationError, match="1..65535"):
        tunnel(None, "127.0.0.1", 0)
