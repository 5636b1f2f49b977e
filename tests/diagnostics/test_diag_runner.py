"""diagnose() end to end: the embedded server plain, with TLS and through SOCKS5, and broken endpoints of every kind."""

from __future__ import annotations

import datetime

import gevent
import pytest

from nexus_green import Client
from nexus_green.diagnostics import Target, diagnose
from nexus_green.testing import (
    FID_ECHO,
    EmbeddedServer,
    RefusingPort,
    Socks5Proxy,
    make_test_certificates,
    run_module_patched,
    scripted_peer,
    silent_peer,
)

FAST = {"count": 5, "interval": 0.0, "load_count": 60, "concurrency": 3, "memory_rounds": 3, "memory_per_round": 20}
PAST = datetime.datetime(2021, 1, 1, tzinfo=datetime.timezone.utc)
MEASURED = ("latency", "bandwidth", "throughput", "cpu", "buffers", "memory")


def statuses(report) -> dict[str, str]:
    return {c.name: c.status for c in report.checks}


def codes(report) -> set[str]:
    return {i.code for i in report.issues}


def test_embedded_server_is_healthy_with_every_figure(leakcheck: None) -> None:
    with EmbeddedServer() as server:
        r = diagnose(f"127.0.0.1:{server.port}", echo_fid=FID_ECHO, **FAST)
    assert r.health == "healthy", r.to_text()
    names = [c.name for c in r.checks]
    assert names == [
        "interfaces",
        "dns",
        "route",
        "tcp",
        "reachability",
        "protocol",
        "latency",
        "bandwidth",
        "throughput",
        "cpu",
        "buffers",
        "memory",
    ]
    assert all(s == "ok" for n, s in statuses(r).items() if n != "route"), statuses(r)
    q, p = r.network_quality, r.performance
    assert q["packetLossPct"] == 0.0 and q["latencyMs"] > 0 and q["bandwidthMbps"] > 0 and q["jitterMs"] >= 0
    assert p["messagesPerSecond"] > 0 and p["averageLatencyMs"] > 0 and p["memoryBytes"] > 0 and p["cpuPercent"] > 0
    assert r.check("throughput").data["completed"] == 60
    assert r.endpoint == f"tcp://127.0.0.1:{server.port}" and r.exit_code == 0 and r.duration_ms > 0


def test_without_an_echo_function_the_echo_checks_say_why(leakcheck: None) -> None:
    with EmbeddedServer() as server:
        r = diagnose(f"127.0.0.1:{server.port}", **FAST)
    s = statuses(r)
    assert (s["bandwidth"], s["memory"], s["buffers"]) == ("skipped", "skipped", "skipped")
    assert r.check("throughput").data["mode"] == "heartbeat" and r.health == "healthy"
    assert r.network_quality["bandwidthMbps"] is None and r.performance["messagesPerSecond"] > 0


def test_embedded_server_with_tls_and_a_test_ca(leakcheck: None) -> None:
    with make_test_certificates() as certs, EmbeddedServer(tls=certs.server_context()) as server:
        r = diagnose(f"127.0.0.1:{server.port}", tls=True, cafile=certs.ca_file, echo_fid=FID_ECHO, **FAST)
    assert r.health == "healthy", r.to_text()
    tls = r.check("tls")
    assert tls.status == "ok" and tls.data["chain_verified"] is True and tls.data["hostname_ok"] is True
    assert tls.data["days_to_expiry"] > 14
    assert r.check("protocol").data == {**r.check("protocol").data, "speaks": "nexuskit", "tls": True}
    assert r.check("throughput").data["completed"] == 60 and r.endpoint.startswith("tls://")


def test_through_the_socks5_proxy(leakcheck: None) -> None:
    with EmbeddedServer() as server, Socks5Proxy() as proxy:
        r = diagnose(f"127.0.0.1:{server.port}", proxy=proxy.url, echo_fid=FID_ECHO, **FAST)
        assert proxy.tunnels_opened >= 5  # reachability, protocol, latency, bandwidth, load, memory
    assert r.health == "healthy", r.to_text()
    assert r.endpoint == f"tcp://127.0.0.1:{server.port} via {proxy.url}"
    assert r.check("reachability").data["via"] == proxy.url
    assert r.check("tcp").data["dialled"] == f"127.0.0.1:{proxy.address[1]}"


def test_tls_through_the_socks5_proxy(leakcheck: None) -> None:
    with (
        make_test_certificates() as certs,
        EmbeddedServer(tls=certs.server_context()) as server,
        Socks5Proxy() as proxy,
    ):
        r = diagnose(f"127.0.0.1:{server.port}", tls=True, cafile=certs.ca_file, proxy=proxy.url, **FAST)
    assert r.health == "healthy", r.to_text()
    assert r.check("tls").data["chain_verified"] is True


def test_closed_port_is_unhealthy_and_the_rest_is_skipped_with_the_reason(leakcheck: None) -> None:
    with RefusingPort() as port:
        r = diagnose(f"127.0.0.1:{port.port}", echo_fid=FID_ECHO, **FAST)
    assert r.health == "unhealthy" and r.exit_code == 2
    # Both checks found the refusal; the issues list it once, under the first.
    assert [f.code for c in r.checks for f in c.findings if f.code.endswith(".refused")] == [
        "tcp.refused",
        "reachability.refused",
    ]
    assert [i.code for i in r.issues] == ["tcp.refused"]
    for name in ("protocol",) + MEASURED:
        c = r.check(name)
        assert c.status == "skipped" and "unreachable" in c.skipped_reason, name
    assert r.network_quality == {"bandwidthMbps": None, "latencyMs": None, "packetLossPct": None, "jitterMs": None}
    assert "start the server, or fix the port (is it the right host?)" in r.recommendations


@pytest.mark.parametrize(
    ("answer", "speaks", "code"),
    [
        (b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n", "http", "protocol.http"),
        (b"\x00\x01garbage garbage garbage\r\n", "garbage", "protocol.garbage"),
    ],
)
def test_peer_that_speaks_another_protocol(leakcheck: None, answer: bytes, speaks: str, code: str) -> None:
    def script(sock) -> None:
        while sock.recv(4096):
            sock.sendall(answer)

    with scripted_peer(script) as peer:
        r = diagnose(f"127.0.0.1:{peer.port}", echo_fid=FID_ECHO, timeout=2, **FAST)
    assert r.health == "unhealthy" and code in codes(r)
    assert r.check("protocol").data["speaks"] == speaks
    for name in MEASURED:
        assert f"found: {speaks}" in r.check(name).skipped_reason, name
    assert statuses(r)["reachability"] == "ok"


def test_silent_peer(leakcheck: None) -> None:
    with silent_peer() as peer:
        r = diagnose(f"127.0.0.1:{peer.port}", timeout=0.3, **FAST)
    assert r.health == "unhealthy" and "protocol.silent" in codes(r)
    assert r.check("latency").status == "skipped"


def test_nexuskit_peer_that_ignores_heartbeats_is_degraded_and_not_measured(leakcheck: None) -> None:
    from nexus_green.protocol.frames import Frame, encode_frame

    def pushes_only(sock) -> None:
        sock.sendall(encode_frame(Frame(qid=0, fid=4, body=b"welcome")))
        while sock.recv(4096):
            pass

    with scripted_peer(pushes_only) as peer:
        r = diagnose(f"127.0.0.1:{peer.port}", timeout=0.3, **FAST)
    assert r.health == "degraded" and codes(r) == {"protocol.no_heartbeat_answer"}
    for name in MEASURED:
        assert "did not answer a heartbeat" in r.check(name).skipped_reason, name


def test_plain_server_diagnosed_with_tls(leakcheck: None) -> None:
    with EmbeddedServer() as server:
        r = diagnose(f"127.0.0.1:{server.port}", tls=True, timeout=2, **FAST)
    assert r.health == "unhealthy"
    assert "protocol.plain_not_tls" in codes(r) and r.check("tls").status == "failed"
    assert "only without TLS" in r.check("latency").skipped_reason


def test_expired_certificate(leakcheck: None) -> None:
    with make_test_certificates() as certs:
        cert, key, _ = certs.issue_server_cert("localhost", "127.0.0.1", name="old", not_after=PAST)
        with EmbeddedServer(tls=certs.server_context(cert_file=cert, key_file=key)) as server:
            r = diagnose(f"127.0.0.1:{server.port}", tls=True, cafile=certs.ca_file, echo_fid=FID_ECHO, **FAST)
    assert r.health == "unhealthy" and "tls.expired" in codes(r)
    assert r.check("tls").data["days_to_expiry"] < 0
    # The other checks still measured the server: one run reports the certificate and the figures.
    assert r.check("protocol").data["speaks"] == "nexuskit" and r.check("latency").data["received"] == 5


def test_self_signed_expired_certificate_for_another_host_reports_every_problem(leakcheck: None) -> None:
    with make_test_certificates() as certs:
        cert, key, _ = certs.issue_custom_cert(
            "bad", common_name="other.test", dns_names=("other.test",), not_after=PAST, self_signed=True
        )
        with EmbeddedServer(tls=certs.server_context(cert_file=cert, key_file=key)) as server:
            r = diagnose(f"127.0.0.1:{server.port}", tls=True, cafile=certs.ca_file, **FAST)
    found = codes(r)
    assert {"tls.expired", "tls.hostname_mismatch"} <= found, found
    assert found & {"tls.self_signed", "tls.untrusted_chain"}, found
    assert r.health == "unhealthy" and r.exit_code == 2
    md = r.to_markdown()
    assert "tls.expired" in md and "tls.hostname_mismatch" in md


def test_live_client_state_and_its_connection_id(leakcheck: None) -> None:
    with EmbeddedServer() as server, Client(server.url) as client:
        client.request(b"x", fid=FID_ECHO, timeout=5)
        r = diagnose(Target(host="127.0.0.1", port=server.port), client=client, skip=MEASURED[:1] + ("memory",), **FAST)
        conn_id = client.pool.connections[0].conn_id
    assert r.connection_id == conn_id
    assert r.check("client").data["pool"]["connected"] == 1 and r.check("latency") is None


def test_a_live_client_alone_names_the_endpoint(leakcheck: None) -> None:
    with EmbeddedServer() as server, Client(server.url) as client:
        client.connect()
        r = diagnose(client=client, skip=("throughput", "memory", "bandwidth"), **FAST)
    assert r.endpoint == server.url and r.health == "healthy"
    assert r.check("client").data["endpoint"] == server.url and r.check("latency").data["received"] == 5
    with pytest.raises(ValueError, match="needs a target"):
        diagnose()
    with pytest.raises(ValueError, match="no endpoint to diagnose"):
        diagnose(client=object())


def test_ipv6_loopback_endpoint(leakcheck: None) -> None:
    with EmbeddedServer("::1") as server:
        r = diagnose(f"[::1]:{server.port}", skip=("throughput", "memory", "bandwidth"), **FAST)
    assert r.endpoint == f"tcp://[::1]:{server.port}" and r.health == "healthy", r.to_text()
    assert r.check("dns").data["addresses"] == [{"address": "::1", "family": "ipv6"}]
    assert r.check("protocol").data["speaks"] == "nexuskit"
    route = r.check("route")
    assert route.status == "skipped" or route.data["family"] == "ipv6"


def test_budget_skips_what_it_cannot_fit(leakcheck: None) -> None:
    progress: list[tuple[str, int, int]] = []
    with EmbeddedServer() as server:
        r = diagnose(f"127.0.0.1:{server.port}", budget=0.000001, progress=lambda *a: progress.append(a), **FAST)
    skipped = [c for c in r.checks if c.status == "skipped"]
    assert len(skipped) == len(r.checks) == 12 and all("time budget" in c.skipped_reason for c in skipped)
    assert r.health == "healthy"  # nothing ran, nothing found: the skipped reasons say why
    assert progress[0] == ("interfaces", 0, 10) and progress[-1] == ("done", 10, 10)  # 10 steps, 12 results


def test_a_check_that_crashes_is_a_critical_finding_not_a_traceback(
    leakcheck: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    import nexus_green.diagnostics.runner as runner

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(runner, "check_interfaces", broken)
    with EmbeddedServer() as server:
        r = diagnose(f"127.0.0.1:{server.port}", skip=("latency", "throughput", "memory", "bandwidth"), **FAST)
    c = r.check("interfaces")
    assert c.status == "failed" and c.findings[0].code == "interfaces.crashed" and "boom" in c.findings[0].message
    assert r.health == "unhealthy"


def test_bad_arguments_raise_before_anything_runs() -> None:
    with pytest.raises(ValueError, match="unknown check"):
        diagnose("127.0.0.1:1", skip=("nope",))
    with pytest.raises(ValueError, match="HOST:PORT"):
        diagnose("127.0.0.1")
    with pytest.raises(ValueError, match="cafile '/no/such/ca.pem' is not a readable file"):
        diagnose("127.0.0.1:1", tls=True, cafile="/no/such/ca.pem")


def test_total_time_is_bounded_against_a_blackholed_endpoint(leakcheck: None) -> None:
    with silent_peer() as peer:
        with gevent.Timeout(30):
            r = diagnose(f"127.0.0.1:{peer.port}", timeout=0.2, budget=5, **FAST)
    assert r.duration_ms < 30_000


def test_the_budget_cuts_a_slow_heartbeat_burst_short(leakcheck: None) -> None:
    from nexus_green.protocol.frames import heartbeat_frame

    def first_heartbeat_only(sock) -> None:  # per connection: answers one heartbeat, then goes quiet
        sock.recv(24)
        sock.sendall(heartbeat_frame(response=True))
        while sock.recv(4096):
            pass

    with scripted_peer(first_heartbeat_only) as peer:
        r = diagnose(
            f"127.0.0.1:{peer.port}",
            count=50,
            interval=0,
            timeout=0.5,
            budget=1.5,
            skip=("bandwidth", "throughput", "memory"),
        )
    lat = r.check("latency").data
    assert lat["received"] == 1 and 1 < lat["sent"] < 50  # 50 probes of 0.5 s do not fit in 1.5 s
    assert "rules.packet_loss" in codes(r) and r.health == "unhealthy"


def test_module_passes_under_patch_all() -> None:
    run = run_module_patched(__file__)
    assert run.returncode == 0, run.report()
