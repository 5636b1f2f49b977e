"""Connection checks against real peers on raw sockets: the embedded server, refusing, HTTP, TLS, garbage, silent."""

from __future__ import annotations

import gevent
import pytest

from nexus_green import Client
from nexus_green.diagnostics import (
    Target,
    check_client,
    check_dns,
    check_protocol,
    check_reachability,
    check_tcp,
    classify_bytes,
    open_link,
    parse_hostport,
)
from nexus_green.diagnostics.connection import connect_failure
from nexus_green.errors import ConfigurationError, ConnectionRefused, ConnectTimeout, InvalidURL, ProxyError
from nexus_green.protocol.frames import Frame, encode_frame
from nexus_green.resilience.breaker import CircuitBreaker
from nexus_green.resilience.middleware import CircuitBreakerMiddleware
from nexus_green.testing import (
    EmbeddedServer,
    RefusingPort,
    Socks5Proxy,
    TLSEchoServer,
    make_test_certificates,
    run_module_patched,
    scripted_peer,
    settle_io,
    silent_peer,
)


def http_server(sock) -> None:
    sock.recv(1024)
    sock.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")


def garbage_server(sock) -> None:
    sock.sendall(b"220 smtp.example ESMTP ready\r\n")
    gevent.sleep(5)


def closing_server(sock) -> None:
    sock.recv(1024)


def welcome_no_heartbeat(sock) -> None:
    sock.sendall(encode_frame(Frame(qid=0, fid=4, body=b"welcome")))
    gevent.sleep(5)


def target_of(peer, **kw) -> Target:
    host, port = peer.address if hasattr(peer, "address") else peer
    return Target(host=host, port=port, **kw)


# ------------------------------------------------------------------ parsing
def test_parse_hostport_accepts_names_v4_v6_and_names_the_bad_text() -> None:
    assert parse_hostport("db.internal:7600") == ("db.internal", 7600)
    assert parse_hostport("[::1]:1") == ("::1", 1)
    for bad in ("nowhere", ":80", "host:", "host:0", "host:65536", "host:x", "::1:80"):
        with pytest.raises(ValueError, match=repr(bad).replace("[", r"\[")):
            parse_hostport(bad)


def test_target_refuses_bad_values_saying_what() -> None:
    with pytest.raises(ConfigurationError, match="port in 1..65535"):
        Target(host="h", port=0)
    with pytest.raises(ConfigurationError, match="needs a host"):
        Target(host="", port=1)
    with pytest.raises(InvalidURL, match="only socks5"):
        Target(host="h", port=1, proxy="http://proxy:3128")
    with pytest.raises(ConfigurationError, match="socks5:// URL or a ProxyConfig"):
        Target(host="h", port=1, proxy=42)
    t = Target(host="::1", port=7600, tls=True, proxy="socks5://u:p%40ss@127.0.0.1:1080")
    assert t.url == "tls://[::1]:7600"
    assert t.label == "tls://[::1]:7600 via socks5://127.0.0.1:1080"
    assert t.proxy_config.password == "p@ss"
    from nexus_green.transport.socks5 import ProxyConfig

    assert Target(host="h", port=1, proxy=ProxyConfig(host="::1", port=9, username="u", password="p@")).proxy_url == (
        "socks5h://u:p%40@[::1]:9"
    )


# ------------------------------------------------------------------ DNS
def test_dns_of_a_name_lists_every_address_with_its_family() -> None:
    r = check_dns(Target(host="localhost", port=7600), timeout=5)
    assert r.status == "ok", r
    assert {"address": "127.0.0.1", "family": "ipv4"} in r.data["addresses"]
    assert r.data["ipv4"] >= 1 and r.data["ipv4"] + r.data["ipv6"] == len(r.data["addresses"])
    assert r.data["literal"] is False and r.data["time_ms"] >= 0


def test_dns_failure_is_critical_directly_and_a_warning_through_a_resolving_proxy() -> None:
    r = check_dns(Target(host="no-such-host.invalid", port=1), timeout=5)
    assert r.status == "failed"
    assert [f.code for f in r.findings] == ["dns.failed"]
    assert r.data["addresses"] == [] and r.data["error"]
    via = check_dns(Target(host="no-such-host.invalid", port=1, proxy="socks5h://127.0.0.1:1080"), timeout=5)
    assert via.status == "warning" and via.findings[0].severity == "warning"
    assert via.data["proxy"]["addresses"] == [{"address": "127.0.0.1", "family": "ipv4"}]
    bad_proxy = check_dns(Target(host="127.0.0.1", port=1, proxy="socks5://no-such-proxy.invalid:1080"), timeout=5)
    assert [f.code for f in bad_proxy.findings] == ["dns.proxy_failed"]


def test_dns_slow_lookup_is_a_warning() -> None:
    r = check_dns(Target(host="localhost", port=1), slow_ms=-1)
    assert [f.code for f in r.findings] == ["dns.slow"] and r.status == "warning"


# ------------------------------------------------------------------ TCP and reachability
def test_tcp_connects_and_times_each_address(leakcheck: None) -> None:
    with EmbeddedServer() as server:
        r = check_tcp(target_of(server), timeout=5)
    assert r.status == "ok"
    assert r.data["attempts"][0]["ok"] is True and r.data["connect_ms"] > 0
    assert r.data["dialled"] == f"127.0.0.1:{server.port}"


def test_tcp_refused_port_is_critical(leakcheck: None) -> None:
    with RefusingPort() as port:
        r = check_tcp(target_of(port), timeout=2)
        reach = check_reachability(target_of(port), timeout=2)
    assert r.status == "failed" and r.data["attempts"][0]["ok"] is False
    assert r.findings[0].code == "tcp.refused" and "refused" in r.findings[0].message
    assert reach.status == "failed" and reach.data == {**reach.data, "reachable": False, "via": "direct"}
    assert reach.findings[0].code == "reachability.refused"


def test_tcp_with_a_slow_threshold_and_unresolvable_host() -> None:
    with EmbeddedServer() as server:
        slow = check_tcp(target_of(server), slow_ms=-1)
    assert [f.code for f in slow.findings] == ["tcp.slow_connect"]
    r = check_tcp(Target(host="no-such-host.invalid", port=1), timeout=5)
    assert [f.code for f in r.findings] == ["tcp.dns"] and r.data["attempts"] == []


def test_tcp_warns_when_only_some_addresses_accept(leakcheck: None) -> None:
    import socket

    def two_addresses(host, port):  # 127.0.0.2 is loopback too, but nothing listens there
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in ("127.0.0.1", "127.0.0.2")]

    with EmbeddedServer("127.0.0.1") as server:
        t = Target(host="db.test", port=server.port)
        tcp = check_tcp(t, timeout=2, resolver=two_addresses)
        dns = check_dns(t, resolver=two_addresses)
    assert [a["ok"] for a in tcp.data["attempts"]] == [True, False]
    assert tcp.status == "warning" and tcp.findings[0].code == "tcp.some_addresses_fail"
    assert "127.0.0.2" in tcp.findings[0].message
    assert dns.data["ipv4"] == 2 and dns.data["literal"] is False


def test_reachability_and_tcp_through_the_socks5_proxy(leakcheck: None) -> None:
    with EmbeddedServer() as server, Socks5Proxy() as proxy:
        t = Target(host="127.0.0.1", port=server.port, proxy=proxy.url)
        reach = check_reachability(t, timeout=5)
        tcp = check_tcp(t, timeout=5)
        proto = check_protocol(t, timeout=5)
        assert proxy.tunnels_opened >= 2
    assert reach.status == "ok" and reach.data["via"] == proxy.url
    assert tcp.data["dialled"] == f"127.0.0.1:{proxy.address[1]}"  # the client dials the proxy
    assert proto.data["speaks"] == "nexuskit"


def test_proxy_that_refuses_the_target_is_named(leakcheck: None) -> None:
    with Socks5Proxy(force_reply=0x05) as proxy:
        reach = check_reachability(Target(host="127.0.0.1", port=9, proxy=proxy.url), timeout=5)
    assert reach.findings[0].code == "reachability.proxy" and "proxy" in reach.findings[0].message


def test_connect_failure_names_timeouts_tls_and_others() -> None:
    from nexus_green.errors import CertificateExpired

    assert connect_failure("x", ConnectTimeout("slow", phase="tcp"), "t").code == "x.timeout"
    assert connect_failure("x", CertificateExpired("old"), "t").code == "x.tls"
    assert connect_failure("x", OSError("no route"), "t").code == "x.unreachable"
    assert connect_failure("x", ConnectionRefused("no"), "t").code == "x.refused"
    assert connect_failure("x", ProxyError("no", reason="x"), "t").code == "x.proxy"


# ------------------------------------------------------------------ protocol
def test_classify_bytes() -> None:
    assert classify_bytes(encode_frame(Frame(qid=1, fid=1, body=b"x"))) == "nexuskit"
    assert classify_bytes(b"HTTP/1.0 200 OK\r\n") == "http"
    assert classify_bytes(b"HTT") == "http"
    assert classify_bytes(b"\x16\x03\x01\x00\x10") == "tls"
    assert classify_bytes(b"\x15") == "tls"
    assert classify_bytes(b"\x16\x99") == "garbage"
    assert classify_bytes(b"SSH-2.0-OpenSSH\r\n") == "garbage"
    assert classify_bytes(b"") == "nothing"


def test_protocol_embedded_server_answers_the_heartbeat(leakcheck: None) -> None:
    with EmbeddedServer(welcome=b"hello") as server:
        r = check_protocol(target_of(server), timeout=5)
    assert r.status == "ok" and r.findings == ()
    assert r.data["speaks"] == "nexuskit" and r.data["heartbeat_rtt_ms"] > 0
    assert r.data["frames"] == 2  # the welcome push, then the heartbeat answer
    assert r.data["first_bytes"].startswith("00 00 00")


@pytest.mark.parametrize(
    ("script", "speaks", "code"),
    [
        (http_server, "http", "protocol.http"),
        (garbage_server, "garbage", "protocol.garbage"),
        (closing_server, "closed", "protocol.closed"),
    ],
)
def test_protocol_names_a_peer_that_speaks_something_else(leakcheck: None, script, speaks, code) -> None:
    with scripted_peer(script) as peer:
        r = check_protocol(target_of(peer), timeout=2)
    assert r.status == "failed"
    assert r.data["speaks"] == speaks
    assert [f.code for f in r.findings] == [code]
    assert "does not speak NexusKit" in r.findings[0].message


def test_protocol_names_a_real_http_server_that_waits_for_a_line(leakcheck: None) -> None:
    """The stdlib's HTTP server (not ours) reads a request line the binary heartbeat never ends.

    Without the empty line sent after a short silence it looked silent (found
    by running the CLI against ``python -m http.server``).
    """
    import http.server
    import threading

    server = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        r = check_protocol(Target(host="127.0.0.1", port=server.server_address[1]), timeout=3)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
    assert r.data["speaks"] == "http" and r.data["nudged"] is True
    assert [f.code for f in r.findings] == ["protocol.http"]


def test_protocol_silent_peer_is_nothing(leakcheck: None) -> None:
    with silent_peer() as peer:
        r = check_protocol(target_of(peer), timeout=0.3)
    assert r.data["speaks"] == "nothing" and r.findings[0].code == "protocol.silent"
    assert r.data["first_bytes"] == ""


def test_protocol_nexuskit_peer_that_ignores_heartbeats_is_a_warning(leakcheck: None) -> None:
    with scripted_peer(welcome_no_heartbeat) as peer:
        r = check_protocol(target_of(peer), timeout=0.3)
    assert r.status == "warning" and r.data["speaks"] == "nexuskit" and r.data["heartbeat_rtt_ms"] is None
    assert [f.code for f in r.findings] == ["protocol.no_heartbeat_answer"]


def test_protocol_broken_framing_is_garbage(leakcheck: None) -> None:
    def bad_frames(sock) -> None:
        sock.recv(1024)
        sock.sendall(b"\xff\xff\xff\xff\x7a\x5a" + b"\x00" * 20)  # the tag, then an impossible length
        gevent.sleep(5)

    with scripted_peer(bad_frames) as peer:
        r = check_protocol(target_of(peer), timeout=1)
    assert r.data["speaks"] == "garbage" and "framing" in r.data["error"]


def test_protocol_tls_on_a_plain_port_is_named(leakcheck: None) -> None:
    with make_test_certificates() as certs, TLSEchoServer(certs.server_context()) as server:
        r = check_protocol(target_of(server.address), timeout=2)
    assert r.data["speaks"] == "tls" and r.findings[0].code == "protocol.tls_on_plain"
    assert "--tls" in r.findings[0].recommendation


def test_protocol_over_tls_and_plain_server_under_tls(leakcheck: None) -> None:
    with make_test_certificates() as certs, EmbeddedServer(tls=certs.server_context()) as tls_server:
        ok = check_protocol(target_of(tls_server, tls=True), timeout=5)
    assert ok.status == "ok" and ok.data["speaks"] == "nexuskit" and ok.data["tls"] is True
    with EmbeddedServer() as plain:
        r = check_protocol(target_of(plain, tls=True), timeout=2)
    assert r.data["speaks"] == "nexuskit" and r.data["tls"] is False
    assert [f.code for f in r.findings] == ["protocol.plain_not_tls"]


def test_protocol_refused_port_is_unreachable(leakcheck: None) -> None:
    with RefusingPort() as port:
        r = check_protocol(target_of(port), timeout=2)
    assert r.data["speaks"] == "unreachable" and r.findings[0].code == "protocol.refused"


def test_open_link_through_proxy_with_tls(leakcheck: None) -> None:
    with (
        make_test_certificates() as certs,
        EmbeddedServer(tls=certs.server_context()) as server,
        Socks5Proxy() as proxy,
    ):
        s = open_link(Target(host="127.0.0.1", port=server.port, tls=True, proxy=proxy.url), 5)
        try:
            assert s.version() in ("TLSv1.2", "TLSv1.3")
        finally:
            s.close()


def test_open_link_maps_a_reset_during_the_proxy_handshake(leakcheck: None) -> None:
    def reset(sock) -> None:
        import socket
        import struct

        sock.recv(16)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    with scripted_peer(reset) as fake_proxy:
        with pytest.raises(Exception) as info:
            open_link(Target(host="127.0.0.1", port=9, proxy=f"socks5://127.0.0.1:{fake_proxy.port}"), 2)
    from nexus_green.errors import NexusError

    assert isinstance(info.value, NexusError)


# ------------------------------------------------------------------ a live client
def test_client_state_of_a_live_client(leakcheck: None) -> None:
    with EmbeddedServer() as server, Client(server.url) as client:
        client.request(b"x", fid=1, timeout=5)
        r = check_client(client)
        assert r.status == "ok" and r.findings == ()
        assert r.data["pool"]["connected"] == 1 and r.data["repr"] == repr(client.pool)
        assert r.data["connections"][0]["responses"] == 1
        assert r.data["connections"][0]["state"] == "connected"
        assert r.data["connections"][0]["heartbeats_sent"] == 0 and r.data["connections"][0]["heartbeat_rtt_ms"] is None
        assert check_client(client.pool).data["pool"]["connected"] == 1  # a pool works too
    closed = check_client(client)
    assert closed.status == "failed" and closed.findings[0].code == "client.closed"


def test_client_state_shows_the_last_heartbeat_round_trip(leakcheck: None) -> None:
    with EmbeddedServer() as server, Client(server.url, heartbeat_interval=0.05) as client:
        client.connect()
        conn = client.pool.connections[0]
        assert settle_io(lambda: conn.heartbeat.last_rtt is not None, timeout=5)
        r = check_client(client)
    assert r.data["connections"][0]["heartbeats_sent"] >= 1 and r.data["connections"][0]["heartbeat_rtt_ms"] > 0


def test_client_with_an_open_breaker_is_unhealthy(leakcheck: None) -> None:
    breaker = CircuitBreaker(name="backend")
    with EmbeddedServer() as server, Client(server.url, middlewares=[CircuitBreakerMiddleware(breaker)]) as client:
        client.request(b"x", fid=1, timeout=5)
        breaker.open()
        r = check_client(client)
        half = CircuitBreaker(name="other")
        half.half_open()
        r2 = check_client(client, breakers=[half])
    assert r.data["breakers"] == [{"name": "backend", "state": "open"}]
    assert r.status == "failed" and [f.code for f in r.findings] == ["client.breaker_open"]
    assert {f.code for f in r2.findings} == {"client.breaker_open", "client.breaker_half_open"}


def test_client_that_cannot_connect_and_pool_pressure(leakcheck: None) -> None:
    with RefusingPort() as port, Client(port.url, reconnect=False, connect_timeout=1) as client:
        with pytest.raises(ConnectionRefused):
            client.request(b"x", fid=1, timeout=2)
        r = check_client(client)
    assert "client.not_connected" in [f.code for f in r.findings]

    class Stub:
        connections: list = []

        def stats(self):
            return {"endpoint": "tcp://x:1", "connected": 1, "failing": 0, "exhausted": 3, "waiters": 2}

    codes = [f.code for f in check_client(Stub()).findings]
    assert codes == ["client.pool_exhausted", "client.waiters"]


def test_module_passes_under_patch_all() -> None:
    run = run_module_patched(__file__)
    assert run.returncode == 0, run.report()
