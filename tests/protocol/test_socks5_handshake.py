"""The sans-IO SOCKS5 client handshake: bytes out, replies in, every failure named."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nexus_green.errors import ConfigurationError, LocalProtocolError, ProxyError
from nexus_green.protocol.socks5 import (
    REPLY_REASONS,
    AuthSucceeded,
    MethodSelected,
    Socks5Handshake,
    Socks5State,
    TunnelEstablished,
    encode_address,
)

OK_V4 = b"\x05\x00\x00\x01\x0a\x00\x00\x02\x1f\x90"  # bound 10.0.0.2:8080


def connected_no_auth() -> Socks5Handshake:
    hs = Socks5Handshake(target_host="example.com", target_port=443)
    hs.initiate()
    hs.receive_data(b"\x05\x00")
    hs.data_to_send()
    return hs


def test_no_auth_domain_target_full_exchange() -> None:
    hs = Socks5Handshake(target_host="example.com", target_port=443)
    assert hs.state is Socks5State.IDLE
    assert hs.bytes_needed() == 0
    assert hs.initiate() == b"\x05\x01\x00"
    assert hs.state is Socks5State.AWAIT_METHOD
    assert hs.data_to_send() == b""
    assert hs.receive_data(b"\x05\x00") == [MethodSelected(method=0)]
    assert hs.state is Socks5State.AWAIT_REPLY
    assert hs.data_to_send() == b"\x05\x01\x00\x03\x0bexample.com\x01\xbb"
    assert hs.receive_data(OK_V4) == [TunnelEstablished(bound_host="10.0.0.2", bound_port=8080)]
    assert hs.state is Socks5State.CONNECTED
    assert hs.bound_address == ("10.0.0.2", 8080)
    assert hs.trailing_data == b""
    assert hs.bytes_needed() == 0
    assert "CONNECTED" in repr(hs) and "example.com:443" in repr(hs)


def test_user_pass_exchange_and_both_methods_offered() -> None:
    hs = Socks5Handshake(target_host="10.1.2.3", target_port=80, username="alice", password="sécret")
    assert hs.initiate() == b"\x05\x02\x00\x02"
    assert hs.receive_data(b"\x05\x02") == [MethodSelected(method=2)]
    pw = "sécret".encode()
    assert hs.data_to_send() == b"\x01\x05alice" + bytes([len(pw)]) + pw
    assert hs.state is Socks5State.AWAIT_AUTH
    assert hs.receive_data(b"\x01\x00") == [AuthSucceeded()]
    assert hs.data_to_send() == b"\x05\x01\x00\x01\x0a\x01\x02\x03\x00\x50"
    hs.receive_data(OK_V4)
    assert hs.state is Socks5State.CONNECTED


def test_credentials_given_but_proxy_chooses_no_auth() -> None:
    hs = Socks5Handshake(target_host="h", target_port=1, username="u", password="p")
    hs.initiate()
    assert hs.receive_data(b"\x05\x00") == [MethodSelected(method=0)]
    assert hs.data_to_send().startswith(b"\x05\x01\x00\x03")


def test_auth_reply_version_5_is_tolerated() -> None:
    hs = Socks5Handshake(target_host="h", target_port=1, username="u", password="")
    hs.initiate()
    hs.receive_data(b"\x05\x02")
    assert hs.data_to_send() == b"\x01\x01u\x00"
    assert hs.receive_data(b"\x05\x00") == [AuthSucceeded()]


def test_all_replies_in_one_chunk_and_trailing_tunnel_data_kept() -> None:
    hs = Socks5Handshake(target_host="h", target_port=1, username="u", password="p")
    hs.initiate()
    events = hs.receive_data(b"\x05\x02" + b"\x01\x00" + OK_V4 + b"early")
    assert events == [
        MethodSelected(method=2),
        AuthSucceeded(),
        TunnelEstablished(bound_host="10.0.0.2", bound_port=8080),
    ]
    # Both requests are queued in order.
    assert hs.data_to_send() == b"\x01\x01u\x01p" + b"\x05\x01\x00\x03\x01h\x00\x01"
    assert hs.trailing_data == b"early"
    assert hs.receive_data(b" more") == []
    assert hs.trailing_data == b"early more"


def test_byte_by_byte_replies_and_bytes_needed_never_overreads() -> None:
    hs = Socks5Handshake(target_host="::1", target_port=9)
    hs.initiate()
    assert hs.bytes_needed() == 2
    assert hs.receive_data(b"\x05") == []
    assert hs.bytes_needed() == 1
    hs.receive_data(b"\x00")
    assert hs.data_to_send() == b"\x05\x01\x00\x04" + ipaddress.IPv6Address("::1").packed + b"\x00\x09"
    reply = b"\x05\x00\x00\x03\x09proxy.lan\x04\x38"
    needed = []
    for i in range(len(reply)):
        needed.append(hs.bytes_needed())
        hs.receive_data(reply[i : i + 1])
    # 4 header bytes, then the domain length byte, then the name and port.
    assert needed[:5] == [4, 3, 2, 1, 1]
    assert needed[5] == 9 + 2
    assert hs.bound_address == ("proxy.lan", 1080)


def test_ipv6_bound_address() -> None:
    hs = Socks5Handshake(target_host="h", target_port=1)
    hs.initiate()
    hs.receive_data(b"\x05\x00")
    assert hs.bytes_needed() == 4
    hs.receive_data(b"\x05\x00\x00\x04")
    assert hs.bytes_needed() == 18
    hs.receive_data(ipaddress.IPv6Address("2001:db8::7").packed + b"\x00\x50")
    assert hs.bound_address == ("2001:db8::7", 80)


@pytest.mark.parametrize("code,reason", sorted(REPLY_REASONS.items()))
def test_every_reply_code_maps_to_its_reason(code: int, reason: str) -> None:
    hs = connected_no_auth()
    with pytest.raises(ProxyError) as info:
        # only VER and REP: the proxy may close without sending the address
        hs.receive_data(bytes([0x05, code]))
    assert info.value.reason == reason
    assert "example.com:443" in str(info.value)
    assert f"{code:#04x}" in str(info.value)
    assert hs.state is Socks5State.FAILED
    assert hs.error is info.value
    expected_retryable = reason in {
        "general_failure",
        "network_unreachable",
        "host_unreachable",
        "connection_refused",
        "ttl_expired",
    }
    assert info.value.retryable is expected_retryable


def test_reply_code_list_is_the_rfc_one() -> None:
    assert set(REPLY_REASONS) == set(range(1, 9))


@pytest.mark.parametrize("code", [0x09, 0x42, 0xFF])
def test_unassigned_reply_code_is_malformed(code: int) -> None:
    hs = connected_no_auth()
    with pytest.raises(ProxyError, match="unassigned reply code") as info:
        hs.receive_data(bytes([0x05, code, 0x00, 0x01]))
    assert info.value.reason == "malformed_reply"
    assert info.value.retryable is False


@pytest.mark.parametrize(
    "setup,reply,reason,text",
    [
        ("greeting", b"\x04\x00", "malformed_reply", "version 0x04"),
        ("greeting", b"\x05\xff", "no_acceptable_methods", "may require a username"),
        ("greeting", b"\x05\x01", "malformed_reply", "GSSAPI"),
        ("greeting", b"\x05\x02", "malformed_reply", "not offered"),
        ("greeting", b"\x05\x80", "malformed_reply", "unknown"),
        ("connect", b"\x04\x00\x00\x01", "malformed_reply", "answered CONNECT with version"),
        ("connect", b"\x05\x00\x00\x07", "malformed_reply", "unknown address type 0x07"),
        ("connect", b"\x05\x00\x00\x03\x02\xff\xfe\x00\x01", "malformed_reply", "non-ASCII"),
    ],
)
def test_malformed_replies(setup: str, reply: bytes, reason: str, text: str) -> None:
    hs = Socks5Handshake(target_host="h", target_port=1)
    hs.initiate()
    if setup == "connect":
        hs.receive_data(b"\x05\x00")
    with pytest.raises(ProxyError, match=text) as info:
        hs.receive_data(reply)
    assert info.value.reason == reason
    assert hs.state is Socks5State.FAILED


def test_no_acceptable_methods_with_credentials_has_no_hint() -> None:
    hs = Socks5Handshake(target_host="h", target_port=1, username="u", password="p")
    hs.initiate()
    with pytest.raises(ProxyError) as info:
        hs.receive_data(b"\x05\xff")
    assert info.value.reason == "no_acceptable_methods"
    assert "username/password" in str(info.value) and "may require" not in str(info.value)


@pytest.mark.parametrize("reply", [b"\x01\x01", b"\x01\xff"])
def test_auth_rejected(reply: bytes) -> None:
    hs = Socks5Handshake(target_host="h", target_port=1, username="u", password="bad")
    hs.initiate()
    hs.receive_data(b"\x05\x02")
    with pytest.raises(ProxyError, match="rejected the username") as info:
        hs.receive_data(reply)
    assert info.value.reason == "auth_rejected"
    assert info.value.retryable is False


def test_auth_reply_with_bad_version() -> None:
    hs = Socks5Handshake(target_host="h", target_port=1, username="u", password="p")
    hs.initiate()
    hs.receive_data(b"\x05\x02")
    with pytest.raises(ProxyError, match="version 0x07") as info:
        hs.receive_data(b"\x07")
    assert info.value.reason == "malformed_reply"


def test_partial_auth_reply_waits() -> None:
    hs = Socks5Handshake(target_host="h", target_port=1, username="u", password="p")
    hs.initiate()
    hs.receive_data(b"\x05\x02")
    assert hs.receive_data(b"\x01") == []
    assert hs.bytes_needed() == 1


def test_misuse_is_a_local_protocol_error() -> None:
    hs = Socks5Handshake(target_host="h", target_port=1)
    with pytest.raises(LocalProtocolError, match="before initiate"):
        hs.receive_data(b"\x05\x00")
    hs.initiate()
    with pytest.raises(LocalProtocolError, match="cannot 'initiate' in state AWAIT_METHOD"):
        hs.initiate()
    with pytest.raises(ProxyError):
        hs.receive_data(b"\x05\xff")
    with pytest.raises(LocalProtocolError, match="already failed"):
        hs.receive_data(b"\x05\x00")


@pytest.mark.parametrize(
    "kwargs,text",
    [
        ({"target_host": "h", "target_port": 0}, "1..65535"),
        ({"target_host": "h", "target_port": 65536}, "1..65535"),
        ({"target_host": "h", "target_port": True}, "1..65535"),
        ({"target_host": "h", "target_port": "80"}, "1..65535"),
        ({"target_host": "", "target_port": 1}, "empty"),
        ({"target_host": ".".join(["a" * 50] * 6), "target_port": 1}, "305 bytes long; the protocol allows 255"),
        ({"target_host": "a..b", "target_port": 1}, "not a valid host name"),
        ({"target_host": "example.com", "target_port": 1, "remote_dns": False}, "remote_dns=False"),
        ({"target_host": "h", "target_port": 1, "username": "u"}, "together"),
        ({"target_host": "h", "target_port": 1, "password": "p"}, "together"),
        ({"target_host": "h", "target_port": 1, "username": "", "password": "p"}, "username must be 1..255"),
        ({"target_host": "h", "target_port": 1, "username": "u", "password": "p" * 256}, "password must be 0..255"),
    ],
)
def test_bad_arguments_are_configuration_errors(kwargs: dict, text: str) -> None:
    with pytest.raises(ConfigurationError, match=text):
        Socks5Handshake(**kwargs)


def test_encode_address_forms() -> None:
    assert encode_address("1.2.3.4", 1, remote_dns=False) == b"\x01\x01\x02\x03\x04\x00\x01"
    assert encode_address("[2001:db8::1]", 2, remote_dns=False)[:1] == b"\x04"
    # IDNA: a non-ASCII name is sent in its ASCII form
    assert encode_address("bücher.example", 80) == b"\x03\x15xn--bcher-kva.example\x00\x50"


@given(
    atyp=st.sampled_from(["v4", "v6", "name"]),
    port=st.integers(1, 65535),
    chunks=st.lists(st.integers(1, 7), min_size=1, max_size=40),
)
def test_any_chunking_of_the_replies_gives_the_same_result(atyp: str, port: int, chunks: list[int]) -> None:
    if atyp == "v4":
        addr, host = b"\x01" + bytes([192, 0, 2, 9]), "192.0.2.9"
    elif atyp == "v6":
        addr, host = b"\x04" + ipaddress.IPv6Address("fe80::9").packed, "fe80::9"
    else:
        addr, host = b"\x03\x05a.b.c", "a.b.c"
    stream = b"\x05\x02" + b"\x01\x00" + b"\x05\x00\x00" + addr + port.to_bytes(2, "big")
    hs = Socks5Handshake(target_host="t", target_port=1, username="u", password="p")
    hs.initiate()
    events = []
    pos = 0
    sizes = iter(chunks)
    while pos < len(stream):
        n = next(sizes, 3)
        events += hs.receive_data(stream[pos : pos + n])
        pos += n
    assert events[-1] == TunnelEstablished(bound_host=host, bound_port=port)
    assert hs.state is Socks5State.CONNECTED
    assert hs.trailing_data == b""
