"""Endpoint URLs: what parses, what each malformed URL is told, and how endpoints print."""

from __future__ import annotations

import dataclasses

import pytest

from nexus_green.errors import InvalidURL, UsageError
from nexus_green.transport.endpoint import SCHEMES, Endpoint


@pytest.mark.parametrize(
    "url,scheme,host,port",
    [
        ("tcp://127.0.0.1:7600", "tcp", "127.0.0.1", 7600),
        ("tls://example.com:443", "tls", "example.com", 443),
        ("tcp://localhost:1", "tcp", "localhost", 1),
        ("tcp://h:65535", "tcp", "h", 65535),
        ("tcp://h:1/", "tcp", "h", 1),  # a bare trailing slash is harmless
        ("TCP://Example.COM:9", "tcp", "example.com", 9),  # scheme and host are case-insensitive
        ("tcp://[::1]:7600", "tcp", "::1", 7600),
        ("tls://[2001:db8::5]:443", "tls", "2001:db8::5", 443),
    ],
)
def test_parse_valid(url: str, scheme: str, host: str, port: int) -> None:
    ep = Endpoint.parse(url)
    assert (ep.scheme, ep.host, ep.port) == (scheme, host, port)
    assert ep.tls is (scheme == "tls")


@pytest.mark.parametrize(
    "url,problem",
    [
        ("127.0.0.1:7600", "is not a URL like tcp://host:port"),  # no scheme
        ("localhost", "is not a URL like tcp://host:port"),
        ("", "is not a URL like tcp://host:port"),
        ("http://h:1", "unsupported scheme 'http'"),
        ("socks5://h:1", "unsupported scheme 'socks5'"),
        ("://h:1", "unsupported scheme ''"),
        ("tcp://h:1/path", "must be only scheme://host:port"),
        ("tcp://h:1?x=1", "must be only scheme://host:port"),
        ("tcp://h:1#frag", "must be only scheme://host:port"),
        ("tcp://user@h:1", "must be only scheme://host:port"),
        ("tcp://user:pw@h:1", "must be only scheme://host:port"),
        ("tcp://[::1]x:80", "'x:80' after the IPv6 address"),
        ("tcp://[example.com]:80", "malformed URL"),  # urlsplit's own check
        ("tcp://[10.0.0.1]:80", "malformed URL"),
        ("tcp://h]:80", "malformed URL"),
        ("tcp://:pw@h:1", "must be only scheme://host:port"),
        ("tcp://h:abc", "bad port"),
        ("tcp://h:-1", "bad port"),
        ("tcp://h:65536", "bad port"),
        ("tcp://h:1:2", "bad port"),
        ("tcp://h", "no port"),
        ("tcp://h:", "no port"),
        ("tcp://h:0", "port 0"),
        ("tcp://:7600", "no host"),
        ("tcp://", "no host"),
        ("tcp://[::1", "malformed URL"),  # unclosed IPv6 bracket
    ],
)
def test_parse_malformed_names_the_problem(url: str, problem: str) -> None:
    with pytest.raises(InvalidURL) as info:
        Endpoint.parse(url)
    message = str(info.value)
    assert problem in message
    if url:
        assert repr(url) in message  # the offending URL is quoted back
    # InvalidURL is a usage error and a ValueError, so generic handlers catch it too
    assert isinstance(info.value, UsageError) and isinstance(info.value, ValueError)
    assert info.value.retryable is False


def test_parse_port_zero_is_not_called_missing() -> None:
    with pytest.raises(InvalidURL, match="port 0") as info:
        Endpoint.parse("tcp://127.0.0.1:0")
    assert "no port" not in str(info.value)


@pytest.mark.parametrize("value", [None, 7600, b"tcp://h:1", ("h", 1)])
def test_parse_non_string(value: object) -> None:
    with pytest.raises(InvalidURL, match="is not a URL"):
        Endpoint.parse(value)  # type: ignore[arg-type]


def test_bad_port_error_does_not_chain_urllib_noise() -> None:
    with pytest.raises(InvalidURL) as info:
        Endpoint.parse("tcp://h:99999")
    assert info.value.__cause__ is None
    assert info.value.__suppress_context__


def test_address_and_str() -> None:
    ep = Endpoint.parse("tcp://127.0.0.1:7600")
    assert ep.address == "127.0.0.1:7600"
    assert str(ep) == "tcp://127.0.0.1:7600"
    v6 = Endpoint.parse("tls://[::1]:443")
    assert v6.address == "[::1]:443"
    assert str(v6) == "tls://[::1]:443"
    # str() round-trips through parse
    assert Endpoint.parse(str(v6)) == v6
    assert Endpoint.parse(str(ep)) == ep


def test_endpoint_is_frozen_hashable_value() -> None:
    a = Endpoint.parse("tcp://h:1")
    b = Endpoint("tcp", "h", 1)
    assert a == b and hash(a) == hash(b)
    assert {a: 1}[b] == 1
    assert a != Endpoint.parse("tls://h:1")
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.port = 2  # type: ignore[misc]
    assert repr(a) == "Endpoint(scheme='tcp', host='h', port=1)"


def test_schemes() -> None:
    assert SCHEMES == ("tcp", "tls")
    assert not Endpoint.parse("tcp://h:1").tls
    assert Endpoint.parse("tls://h:1").tls
