"""Network checks: interfaces, heartbeat latency/jitter/loss, bandwidth through an echo function, route MTU."""

from __future__ import annotations

import sys

import pytest

from nexus_green.diagnostics import Target, check_bandwidth, check_interfaces, check_latency, check_route
from nexus_green.diagnostics.network import list_interfaces, measuring_options, percentile
from nexus_green.protocol.frames import Frame, heartbeat_frame
from nexus_green.testing import (
    FID_DELAY,
    FID_ECHO,
    EmbeddedServer,
    RefusingPort,
    Socks5Proxy,
    frame_peer,
    make_test_certificates,
    run_module_patched,
    scripted_peer,
    silent_peer,
)

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SIOCGIF* and IP_MTU are Linux interfaces")


def target_of(peer, **kw) -> Target:
    return Target(host=peer.address[0], port=peer.address[1], **kw)


def test_percentile_nearest_rank() -> None:
    values = [float(i) for i in range(1, 101)]
    assert percentile(values, 0.95) == 95.0 and percentile(values, 0.5) == 50.0 and percentile(values, 1.0) == 100.0
    assert percentile([7.0], 0.95) == 7.0


@linux
def test_interfaces_list_loopback_with_its_addresses_and_mtu() -> None:
    lo = [i for i in list_interfaces() if i["loopback"]]
    assert lo and lo[0]["up"] is True and "127.0.0.1" in lo[0]["ipv4"] and lo[0]["mtu"] >= 1280
    r = check_interfaces()
    assert r.name == "interfaces" and lo[0]["name"] in r.data["up"]
    others = [i for i in r.data["interfaces"] if i["up"] and not i["loopback"] and (i["ipv4"] or i["ipv6"])]
    assert r.status == ("ok" if others else "warning")


def test_interfaces_loopback_only_is_a_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    import nexus_green.diagnostics.network as network

    fake = [{"name": "lo", "index": 1, "up": True, "loopback": True, "mtu": 65536, "ipv4": ["127.0.0.1"], "ipv6": []}]
    monkeypatch.setattr(network, "list_interfaces", lambda: fake)
    r = network.check_interfaces()
    assert r.status == "warning" and r.findings[0].code == "interfaces.loopback_only"


# ------------------------------------------------------------------ latency
def test_latency_burst_against_the_embedded_server(leakcheck: None) -> None:
    with EmbeddedServer(welcome=b"hi") as server:
        r = check_latency(target_of(server), count=10, interval=0.001)
        assert server.heartbeats_received == 10
    d = r.data
    assert r.status == "ok" and r.findings == ()
    assert (d["sent"], d["received"], d["lost"], d["loss_pct"]) == (10, 10, 0, 0.0)
    assert len(d["rtts_ms"]) == 10 and all(x > 0 for x in d["rtts_ms"])
    assert d["min_ms"] <= d["p50_ms"] <= d["p95_ms"] <= d["max_ms"]
    assert d["min_ms"] <= d["avg_ms"] <= d["max_ms"] and d["jitter_ms"] >= 0


def test_latency_counts_unanswered_heartbeats_as_lost_and_matches_late_answers(leakcheck: None) -> None:
    seen = [0]

    def every_other(frame: Frame):
        # Answers the 1st, 3rd, 5th... heartbeat at once; the others late (after the probe's timeout).
        seen[0] += 1
        answer = heartbeat_frame(response=True)
        if seen[0] % 2:
            return [answer]
        from nexus_green.testing import Pause

        return [Pause(0.15), answer]

    with frame_peer(every_other) as peer:
        r = check_latency(target_of(peer), count=6, interval=0, probe_timeout=0.1)
    d = r.data
    assert (d["sent"], d["lost"], d["loss_pct"]) == (6, 3, 50.0)
    assert [x is None for x in d["rtts_ms"]] == [False, True, False, True, False, True]
    assert r.status == "ok"  # the figures are judged by the report's rules, not here


def test_latency_silent_peer_loses_everything(leakcheck: None) -> None:
    with silent_peer() as peer:
        r = check_latency(target_of(peer), count=3, interval=0, probe_timeout=0.05)
    assert r.data["loss_pct"] == 100.0 and r.data["avg_ms"] is None and r.data["jitter_ms"] == 0.0
    assert r.status == "failed" and r.findings[0].code == "latency.no_answer"


def test_latency_budget_bounds_the_burst(leakcheck: None) -> None:
    with silent_peer() as peer:
        r = check_latency(target_of(peer), count=1000, interval=0, probe_timeout=0.05, budget=0.2)
    assert 1 <= r.data["sent"] <= 6


def test_latency_against_refusing_http_and_closing_peers(leakcheck: None) -> None:
    with RefusingPort() as port:
        r = check_latency(target_of(port), count=3)
    assert r.status == "failed" and r.findings[0].code == "latency.refused" and r.data["sent"] == 0

    def http(sock) -> None:
        sock.recv(100)
        sock.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")

    with scripted_peer(http) as peer:
        r = check_latency(target_of(peer), count=3, interval=0, probe_timeout=1)
    assert r.findings[0].code == "latency.link_failed" and "framing" in r.findings[0].message

    def close_after_one(sock) -> None:
        sock.recv(24)
        sock.sendall(heartbeat_frame(response=True))
        sock.recv(24)

    with scripted_peer(close_after_one) as peer:
        r = check_latency(target_of(peer), count=5, interval=0, probe_timeout=1)
    assert r.data["received"] == 1 and r.findings[0].code == "latency.link_failed"
    assert "closed" in r.findings[0].message


def test_latency_refuses_bad_arguments() -> None:
    t = Target(host="127.0.0.1", port=1)
    with pytest.raises(ValueError, match="count"):
        check_latency(t, count=0)
    with pytest.raises(ValueError, match="interval"):
        check_latency(t, interval=-1)


def test_latency_through_the_proxy_and_over_tls(leakcheck: None) -> None:
    with (
        make_test_certificates() as certs,
        EmbeddedServer(tls=certs.server_context()) as server,
        Socks5Proxy() as proxy,
    ):
        r = check_latency(Target(host="127.0.0.1", port=server.port, tls=True, proxy=proxy.url), count=4, interval=0)
        assert proxy.tunnels_opened == 1
    assert r.data["received"] == 4 and r.status == "ok"


# ------------------------------------------------------------------ bandwidth
def test_bandwidth_is_skipped_without_an_echo_function() -> None:
    r = check_bandwidth(Target(host="127.0.0.1", port=1))
    assert r.status == "skipped" and "--echo-fid" in r.skipped_reason


def test_bandwidth_through_the_echo_function(leakcheck: None) -> None:
    with EmbeddedServer() as server:
        r = check_bandwidth(target_of(server), echo_fid=FID_ECHO, size=64 * 1024, transfers=4)
        assert server.frames_received >= 5  # the warm-up and the four transfers
    d = r.data
    assert r.status == "ok" and d["transfers"] == 4 and d["bytes_each_way"] == 4 * 64 * 1024
    assert d["bandwidth_mbps"] == pytest.approx(4 * 64 * 1024 * 8 / d["seconds"] / 1e6, rel=1e-2)


def test_bandwidth_through_the_proxy_with_tls(leakcheck: None) -> None:
    with (
        make_test_certificates() as certs,
        EmbeddedServer(tls=certs.server_context()) as server,
        Socks5Proxy() as proxy,
    ):
        t = Target(host="127.0.0.1", port=server.port, tls=True, proxy=proxy.url)
        r = check_bandwidth(t, echo_fid=FID_ECHO, size=4096, transfers=2)
        assert proxy.tunnels_opened == 1
    assert r.data["transfers"] == 2 and r.data["bandwidth_mbps"] > 0


def test_bandwidth_with_a_function_that_is_not_an_echo(leakcheck: None) -> None:
    with EmbeddedServer(handlers={42: lambda frame: b"something else"}) as server:
        r = check_bandwidth(target_of(server), echo_fid=42, size=1024, transfers=3)
    assert r.status == "failed" and r.findings[0].code == "bandwidth.not_an_echo"
    assert r.data["transfers"] == 0 and r.data["bandwidth_mbps"] is None


def test_bandwidth_that_times_out_and_refused_port(leakcheck: None) -> None:
    with EmbeddedServer() as server:
        r = check_bandwidth(target_of(server), echo_fid=FID_DELAY, size=8, transfers=1, timeout=0.2)
    assert r.findings[0].code == "bandwidth.failed" and r.status == "failed"
    with RefusingPort() as port:
        r = check_bandwidth(target_of(port), echo_fid=FID_ECHO, timeout=1)
    assert r.findings[0].code == "bandwidth.failed" and "refused" in r.findings[0].message


def test_measuring_options_carry_proxy_and_unverified_tls() -> None:
    opts = measuring_options(Target(host="h", port=1, tls=True, proxy="socks5://p:1"), 2.0, {"max_size": 3})
    assert opts["proxy"] == "socks5://p:1" and opts["tls"].verify is False and opts["max_size"] == 3


# ------------------------------------------------------------------ route
@linux
def test_route_to_loopback_names_its_mtu_and_interface() -> None:
    r = check_route(Target(host="127.0.0.1", port=7600))
    lo = [i for i in list_interfaces() if i["loopback"]][0]
    assert r.status == "ok"
    assert r.data["path_mtu"] == min(lo["mtu"], 65535)  # an IPv4 packet holds at most 65535 bytes
    assert r.data["interface"] == lo["name"]
    assert r.data["local_address"] == "127.0.0.1" and r.data["family"] == "ipv4"


@linux
def test_route_through_a_proxy_checks_the_proxy_and_an_unresolvable_host_is_skipped() -> None:
    r = check_route(Target(host="db.invalid", port=1, proxy="socks5://127.0.0.1:1080"))
    assert r.data["dialled"] == "127.0.0.1:1080" and r.data["path_mtu"]
    r = check_route(Target(host="no-such-host.invalid", port=1), timeout=5)
    assert r.status == "skipped" and "does not resolve" in r.skipped_reason


def test_route_is_skipped_off_linux(monkeypatch: pytest.MonkeyPatch) -> None:
    import nexus_green.diagnostics.network as network

    monkeypatch.setattr(network.sys, "platform", "darwin")
    r = network.check_route(Target(host="127.0.0.1", port=1))
    assert r.status == "skipped" and "Linux-only" in r.skipped_reason and "darwin" in r.skipped_reason


@linux
def test_route_small_mtu_and_no_route(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    import nexus_green.diagnostics.network as network

    class FakeRoute:
        """A UDP socket whose route has a small MTU, or no route at all."""

        def __init__(self, mtu: int, fail: bool) -> None:
            self.real = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.mtu, self.fail = mtu, fail

        def setsockopt(self, *args) -> None:
            self.real.setsockopt(*args)

        def connect(self, addr) -> None:
            if self.fail:
                raise OSError(101, "Network is unreachable")
            self.real.connect(addr)

        def getsockopt(self, *args) -> int:
            return self.mtu

        def getsockname(self):
            return self.real.getsockname()

        def close(self) -> None:
            self.real.close()

    monkeypatch.setattr(network, "_route_socket", lambda family: FakeRoute(576, False))
    r = network.check_route(Target(host="127.0.0.1", port=1))
    assert r.data["path_mtu"] == 576 and r.findings[0].code == "route.small_mtu" and r.status == "warning"
    monkeypatch.setattr(network, "_route_socket", lambda family: FakeRoute(0, True))
    r = network.check_route(Target(host="127.0.0.1", port=1))
    assert r.status == "failed" and r.findings[0].code == "route.no_route" and r.data["path_mtu"] is None


def test_module_passes_under_patch_all() -> None:
    run = run_module_patched(__file__)
    assert run.returncode == 0, run.report()
