"""Performance checks through a real Client: throughput bounded in count and time, CPU hot spots, buffers, memory growth."""

from __future__ import annotations

import tracemalloc

import pytest

from nexus_green.diagnostics import Target, check_memory_growth, rss_bytes, run_load
from nexus_green.testing import (
    FID_ECHO,
    FID_ERROR,
    EmbeddedServer,
    RefusingPort,
    Socks5Proxy,
    make_test_certificates,
    run_module_patched,
    scripted_peer,
)


def target_of(peer, **kw) -> Target:
    return Target(host=peer.address[0], port=peer.address[1], **kw)


def test_load_through_a_client_with_cpu_and_buffers(leakcheck: None) -> None:
    with EmbeddedServer() as server:
        t, cpu, buffers = run_load(target_of(server), echo_fid=FID_ECHO, count=300, concurrency=6, size=100)
        assert server.frames_received == 300
    d = t.data
    assert t.status == "ok" and t.findings == ()
    assert (d["mode"], d["requests"], d["completed"], d["errors"], d["concurrency"]) == ("client", 300, 300, 0, 6)
    assert d["messages_per_s"] == pytest.approx(300 / d["seconds"], rel=0.01)
    assert d["p50_ms"] <= d["p95_ms"] <= d["p99_ms"] <= d["max_ms"] and d["cut_by_time"] is False
    assert cpu.status == "ok" and 0 < cpu.data["cpu_pct"] and cpu.data["process_cpu_s"] > 0
    assert all(s["self_ms"] > 0 for s in cpu.data["hot_spots"])
    b = buffers.data
    assert buffers.status == "ok" and b["frames_sent"] == 300 and b["bytes_sent"] == 300 * 124
    assert b["writes"] >= 1 and b["frames_per_write"] == pytest.approx(300 / b["writes"], abs=0.01)


def test_load_without_echo_function_uses_heartbeats(leakcheck: None) -> None:
    with EmbeddedServer() as server:
        t, cpu, buffers = run_load(target_of(server), count=40, concurrency=4, profile=False)
        assert server.heartbeats_received == 40
    assert t.data["mode"] == "heartbeat" and t.data["completed"] == 40 and t.data["size"] == 24
    assert cpu.status == "ok" and cpu.data["samples"] == 0 and cpu.data["hot_spots"] == []
    assert buffers.status == "skipped" and "--echo-fid" in buffers.skipped_reason


def test_load_stops_at_its_time_limit_and_says_so(leakcheck: None) -> None:
    with EmbeddedServer() as server:
        t, _, _ = run_load(target_of(server), count=1_000_000, concurrency=2, duration=0.2, profile=False)
    assert t.data["cut_by_time"] is True and 0 < t.data["completed"] < 1_000_000
    assert [f.code for f in t.findings] == ["throughput.cut_by_time"] and t.findings[0].severity == "info"


def test_load_errors_are_counted(leakcheck: None) -> None:
    with EmbeddedServer() as server:
        t, cpu, buffers = run_load(target_of(server), echo_fid=FID_ERROR, count=20, concurrency=2)
    assert t.data["errors"] == 20 and t.data["completed"] == 0 and t.status == "failed"
    assert t.findings[0].code == "throughput.errors" and t.findings[0].severity == "critical"
    assert cpu.status == "skipped" and buffers.status == "skipped"


def test_load_some_errors_is_a_warning(leakcheck: None) -> None:
    calls = [0]

    def flaky(frame):
        from nexus_green.testing import Reply

        calls[0] += 1
        return Reply(b"no", code=503) if calls[0] % 5 == 0 else frame.body

    with EmbeddedServer(handlers={50: flaky}) as server:
        t, _, _ = run_load(target_of(server), echo_fid=50, count=50, concurrency=1, profile=False)
    assert t.data["errors"] == 10 and t.data["completed"] == 40 and t.status == "warning"


def test_load_against_refused_port_and_a_heartbeat_peer_that_hangs_up(leakcheck: None) -> None:
    with RefusingPort() as port:
        t, cpu, _ = run_load(target_of(port), echo_fid=FID_ECHO, count=5, timeout=1)
    assert t.status == "failed" and t.findings[0].code == "throughput.refused" and cpu.status == "skipped"

    def hang_up(sock) -> None:
        sock.recv(24)

    with scripted_peer(hang_up) as peer:
        t, _, _ = run_load(target_of(peer), count=3, concurrency=1, timeout=1, profile=False)
    assert t.data["errors"] >= 1 and "closed" in t.data["error_samples"][0]


def test_load_through_the_proxy_with_tls(leakcheck: None) -> None:
    with (
        make_test_certificates() as certs,
        EmbeddedServer(tls=certs.server_context()) as server,
        Socks5Proxy() as proxy,
    ):
        t, _, b = run_load(
            Target(host="127.0.0.1", port=server.port, tls=True, proxy=proxy.url),
            echo_fid=FID_ECHO,
            count=30,
            concurrency=3,
            profile=False,
        )
        assert proxy.tunnels_opened >= 1
    assert t.data["completed"] == 30 and b.data["frames_sent"] == 30


def test_load_refuses_bad_bounds() -> None:
    t = Target(host="127.0.0.1", port=1)
    with pytest.raises(ValueError, match="count and concurrency"):
        run_load(t, count=0)
    with pytest.raises(ValueError, match="duration"):
        run_load(t, duration=0)


# ------------------------------------------------------------------ memory
class Hoarder:
    """A middleware that keeps every response: a leak through a real Client."""

    name = "hoarder"

    def __init__(self) -> None:
        self.kept: list = []

    def __call__(self, request, call_next):
        response = call_next(request)
        self.kept.append(bytes(response.body) + b"!")
        return response


def test_memory_steady_client_raises_no_suspicion(leakcheck: None) -> None:
    with EmbeddedServer() as server:
        r = check_memory_growth(target_of(server), echo_fid=FID_ECHO, rounds=4, per_round=100)
    d = r.data
    assert r.status == "ok" and d["method"] == "tracemalloc" and d["rounds"] == 4 and len(d["samples_bytes"]) == 4
    assert d["leak_suspected"] is False and d["growth_bytes"] < 256 * 1024
    assert d["rss_bytes"] == pytest.approx(rss_bytes(), rel=0.5)
    assert not tracemalloc.is_tracing()  # it stops what it started


def test_memory_that_keeps_growing_is_a_leak_suspicion(leakcheck: None) -> None:
    hoarder = Hoarder()
    with EmbeddedServer() as server:
        r = check_memory_growth(
            target_of(server),
            echo_fid=FID_ECHO,
            rounds=4,
            per_round=100,
            size=4096,
            threshold_bytes=100_000,
            client_options={"middlewares": [hoarder]},
        )
    d = r.data
    assert len(hoarder.kept) == 401
    assert d["leak_suspected"] is True and d["growth_bytes"] > 3 * 100 * 4096
    assert all(b > a for a, b in zip(d["samples_bytes"][:-1], d["samples_bytes"][1:], strict=True))
    assert d["growth_per_request_bytes"] > 4096
    assert r.status == "warning" and r.findings[0].code == "memory.growing"
    assert d["top_growth"] and "test_diag_performance.py" in d["top_growth"][0]["site"]
    assert "test_diag_performance.py" in r.findings[0].message


def test_memory_keeps_tracing_that_was_on_and_reports_failures(leakcheck: None) -> None:
    tracemalloc.start()
    try:
        with RefusingPort() as port:
            r = check_memory_growth(target_of(port), echo_fid=FID_ECHO, timeout=1)
        assert tracemalloc.is_tracing()
    finally:
        tracemalloc.stop()
    assert r.findings[0].code == "memory.failed" and r.data["rounds"] == 0 and r.data["leak_suspected"] is False


def test_memory_duration_bounds_the_rounds(leakcheck: None) -> None:
    with EmbeddedServer() as server:
        r = check_memory_growth(target_of(server), echo_fid=FID_ECHO, rounds=1000, per_round=50, duration=0.3)
    assert 1 <= r.data["rounds"] < 1000


def test_memory_refuses_bad_rounds_and_skips_without_echo() -> None:
    with pytest.raises(ValueError, match="rounds"):
        check_memory_growth(Target(host="h", port=1), echo_fid=1, rounds=0)
    r = check_memory_growth(Target(host="h", port=1))
    assert r.status == "skipped" and "--echo-fid" in r.skipped_reason


def test_module_passes_under_patch_all() -> None:
    run = run_module_patched(__file__)
    assert run.returncode == 0, run.report()
