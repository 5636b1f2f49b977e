"""ChaosProxy: each fault does what it claims to real traffic (raw sockets and a real Client), and nothing leaks.

The last test reruns the module after ``gevent.monkey.patch_all()``.
"""

from __future__ import annotations

import time
from typing import Any

import gevent
import pytest
from gevent import socket as gsocket

from nexus_green import Client
from nexus_green.chaos import (
    ChaosProxy,
    FaultInjector,
    blackhole,
    close,
    drop,
    duplicate,
    error,
    half_open,
    latency,
    push_flood,
    reorder,
    reset,
    service_down,
    slice_writes,
    slow_response,
    stop_reading,
    throttle,
)
from nexus_green.errors import ConnectionLost, RemoteError, RequestTimeout
from nexus_green.protocol.frames import Frame, FrameDecoder, encode_frame, heartbeat_frame
from nexus_green.testing import (
    FID_DELAY,
    FID_ECHO,
    EmbeddedServer,
    echo_peer,
    refusing_port,
    run_module_patched,
    silent_peer,
)

pytestmark = pytest.mark.usefixtures("leakcheck")


def connect(proxy: Any) -> Any:
    return gsocket.create_connection(proxy.address, timeout=5)


def read_frames(sock: Any, n: int, timeout: float = 5.0) -> list[Frame]:
    dec, got = FrameDecoder(), []
    deadline = time.monotonic() + timeout
    while len(got) < n:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        data = sock.recv(65536)
        if not data:
            break
        got.extend(dec.feed(data))
    return got


def request(qid: int, body: bytes = b"x", fid: int = FID_ECHO) -> bytes:
    return encode_frame(Frame(qid=qid, fid=fid, body=body))


@pytest.fixture
def server() -> Any:
    with EmbeddedServer() as s:
        yield s


def test_forwards_frames_unchanged_and_counts_what_the_client_sent(server: Any) -> None:
    with ChaosProxy(server) as proxy, connect(proxy) as c:
        c.sendall(request(1, b"a") + request(2, b"b") + heartbeat_frame())
        frames = read_frames(c, 3)
        assert [(f.qid, f.body) for f in frames if not f.is_heartbeat] == [(1, b"a"), (2, b"b")]
        assert proxy.requests_seen == 2 and proxy.count_requests(lambda f: f.body == b"a") == 1
        counters = proxy.counters()
        assert counters["frames_upstream"] == 3 and counters["frames_downstream"] == 3
        assert proxy.upstream == server.address and not proxy.down


def test_error_answers_a_request_without_the_server_seeing_it(server: Any) -> None:
    with ChaosProxy(server) as proxy, Client(proxy.url, heartbeat_interval=None) as client:
        with proxy.injector.injected(error(code=503, fid=FID_ECHO)):
            with pytest.raises(RemoteError) as info:
                client.request(b"a", fid=FID_ECHO)
            assert client.request(b"0", fid=FID_DELAY).body == b"ok"  # another fid passes
        assert info.value.code == 503 and proxy.errors_injected == 1
        assert server.applied.get(FID_ECHO, 0) == 0
        assert client.request(b"b", fid=FID_ECHO).body == b"b"


def test_latency_and_slow_response_delay_frames_in_order(server: Any) -> None:
    with ChaosProxy(server) as proxy, Client(proxy.url, heartbeat_interval=None) as client:
        with proxy.injector.injected(latency(0.05, jitter=0.01, seed=1)):
            assert client.request(b"a").latency >= 0.07  # about 0.05 each way, at least 0.04 each
        with proxy.injector.injected(slow_response(0.1)):
            t0 = time.monotonic()
            results = [gevent.spawn(client.request, b"%d" % i) for i in range(5)]
            gevent.joinall(results, timeout=5, raise_error=True)
            assert time.monotonic() - t0 >= 0.1
            assert [g.value.body for g in results] == [b"%d" % i for i in range(5)]
        assert proxy.frames_delayed >= 7


def test_drop_duplicate_and_reorder(server: Any) -> None:
    with ChaosProxy(server) as proxy, connect(proxy) as c:
        with proxy.injector.injected(drop(direction="downstream", qid=1)):
            c.sendall(request(1) + request(2))
            assert [f.qid for f in read_frames(c, 1)] == [2]
        with proxy.injector.injected(duplicate(direction="downstream")):
            c.sendall(request(3))
            assert [f.qid for f in read_frames(c, 2)] == [3, 3]
        with proxy.injector.injected(reorder(direction="downstream", qid=4, hold=5.0)):
            c.sendall(request(4))
            gevent.sleep(0.05)
            c.sendall(request(5))
            assert [f.qid for f in read_frames(c, 2)] == [5, 4]  # 4 was held until 5 passed
        with proxy.injector.injected(reorder(direction="downstream", hold=0.05)):
            c.sendall(request(6))
            assert [f.qid for f in read_frames(c, 1)] == [6]  # nothing followed: released after hold
        assert (proxy.frames_dropped, proxy.frames_duplicated, proxy.frames_reordered) == (1, 1, 2)
        assert server.frames_received == 6


def test_the_same_traffic_with_the_same_seeds_replays_exactly(server: Any) -> None:
    def run(injector: FaultInjector) -> tuple[list[int], list[Any]]:
        with ChaosProxy(server, injector=injector) as proxy, connect(proxy) as c:
            c.sendall(b"".join(request(q) for q in range(1, 101)))  # the server answers in order
            proxy.wait_for(lambda p: p.frames_received["downstream"] == 100)
            got, dec = [], FrameDecoder()
            c.settimeout(0.3)
            try:
                while data := c.recv(65536):
                    got.extend(dec.feed(data))
            except TimeoutError:  # everything that was not dropped has arrived
                pass
            return [f.qid for f in got], [(d.qid, d.action) for d in injector.log]

    first = FaultInjector()
    first.add(drop(direction="downstream", probability=0.3, seed=5))
    first.add(duplicate(direction="downstream", probability=0.1, seed=6))
    again = first.replayed()
    qids, log = run(first)
    assert run(again) == (qids, log)
    assert 0 < sum(a == "drop" for _, a in log) < 60 and any(a == "duplicate" for _, a in log)


def test_upstream_duplicates_are_counted_once_at_the_proxy(server: Any) -> None:
    with ChaosProxy(server) as proxy, connect(proxy) as c:
        with proxy.injector.injected(duplicate(direction="upstream")):
            c.sendall(request(1, b"once"))
            assert len(read_frames(c, 2)) == 2
        assert proxy.count_requests(lambda f: f.body == b"once") == 1 and server.applied[FID_ECHO] == 2


@pytest.mark.parametrize("fault, exc", [(close, b""), (reset, ConnectionResetError)])
def test_close_and_reset_cut_the_link(server: Any, fault: Any, exc: Any) -> None:
    with ChaosProxy(server) as proxy, connect(proxy) as c:
        with proxy.injector.injected(fault()):
            c.sendall(request(1))
            if exc == b"":
                assert c.recv(10) == b""
            else:
                with pytest.raises(exc):
                    c.recv(10)
        proxy.wait_for(lambda p: p.connections == 0)
        assert server.frames_received == 0
        kind = "closes" if fault is close else "resets"
        assert proxy.counters()[kind] == 1


def test_a_client_sees_a_cut_link_as_connection_lost(server: Any) -> None:
    with ChaosProxy(server) as proxy, Client(proxy.url, heartbeat_interval=None, timeout=2) as client:
        client.connect()
        with proxy.injector.injected(close()), pytest.raises(ConnectionLost):
            client.request(b"a")
        assert client.request(b"b").body == b"b"


def test_blackhole_swallows_everything_then_lets_traffic_pass(server: Any) -> None:
    with ChaosProxy(server) as proxy, Client(proxy.url, heartbeat_interval=None) as client:
        with proxy.injector.injected(blackhole()), pytest.raises(RequestTimeout):
            client.request(b"a", timeout=0.1)
        assert client.request(b"b", timeout=2).body == b"b"
        assert proxy.frames_dropped >= 1


def test_half_open_freezes_links_for_good(server: Any) -> None:
    with ChaosProxy(server) as proxy, Client(proxy.url, heartbeat_interval=None) as client:
        client.connect()
        with proxy.injector.injected(half_open()):
            with connect(proxy) as fresh:
                proxy.wait_for(lambda p: p.links_frozen == 2)
                fresh.sendall(request(9))
                fresh.settimeout(0.1)
                with pytest.raises(TimeoutError):
                    fresh.recv(10)
            with pytest.raises(RequestTimeout):
                client.request(b"a", timeout=0.1)
        with pytest.raises(RequestTimeout):  # the old link stays frozen after the fault
            client.request(b"b", timeout=0.1)
        with Client(proxy.url, heartbeat_interval=None) as other:
            assert other.request(b"c", timeout=2).body == b"c"  # new links work


def test_stop_reading_holds_requests_until_it_is_removed(server: Any) -> None:
    with ChaosProxy(server) as proxy, connect(proxy) as c:
        fault_id = proxy.injector.add(stop_reading())
        c.sendall(request(1))
        gevent.sleep(0.1)
        assert server.frames_received == 0
        proxy.injector.remove(fault_id)
        assert [f.qid for f in read_frames(c, 1)] == [1]


def test_throttle_and_sliced_writes_deliver_whole_frames(server: Any) -> None:
    body = bytes(range(256)) * 8
    with ChaosProxy(server) as proxy, Client(proxy.url, heartbeat_interval=None) as client:
        with proxy.injector.injected(throttle(100_000)):
            t0 = time.monotonic()
            assert client.request(body).body == body
            assert time.monotonic() - t0 >= 2 * len(body) / 100_000 * 0.8
        with proxy.injector.injected(slice_writes(5, 0.0, direction="downstream")):
            assert client.request(body[:100]).body == body[:100]
        with proxy.injector.injected(slice_writes(3, 0.001)), proxy.injector.injected(throttle(1_000_000)):
            assert client.request(b"both").body == b"both"


def test_push_flood_reaches_the_client_before_the_response(server: Any) -> None:
    with ChaosProxy(server) as proxy, Client(proxy.url, heartbeat_interval=None, push_queue_size=10) as client:
        with proxy.injector.injected(push_flood(50)):
            assert client.request(b"a").body == b"a"
        assert proxy.pushes_injected == 50
        assert client.stats()["pushes_queued"] == 10 and client.pushes_dropped == 40


def test_service_down_refuses_then_listens_on_the_same_port(server: Any) -> None:
    with ChaosProxy(server) as proxy:
        port = proxy.port
        c = connect(proxy)
        proxy.wait_for(lambda p: len(p.links) == 1)
        fault_id = proxy.injector.add(service_down())
        assert proxy.down and c.recv(10) == b""
        c.close()
        with pytest.raises(ConnectionRefusedError):
            connect(proxy)
        proxy.injector.add(service_down())  # a second one changes nothing
        proxy.injector.remove(fault_id)
        assert proxy.down
        proxy.injector.clear()
        assert not proxy.down and proxy.port == port
        with connect(proxy) as again:
            again.sendall(request(1))
            assert [f.qid for f in read_frames(again, 1)] == [1]
        assert proxy.refusals == 1


def test_service_down_while_closed_changes_nothing(server: Any) -> None:
    injector = FaultInjector()
    proxy = ChaosProxy(server, injector=injector).start()
    proxy.close()
    injector.add(service_down())
    assert not proxy.down
    with ChaosProxy(server, injector=injector) as down_from_start:  # starts down
        assert down_from_start.down
        with pytest.raises(ConnectionRefusedError):
            connect(down_from_start)


def test_a_connection_accepted_while_going_down_is_reset(server: Any) -> None:
    with ChaosProxy(server) as proxy:
        proxy.injector.add(service_down())
        sock = gsocket.socket()
        proxy._run(sock)  # what an accept that raced the listener's close would run
        assert sock.fileno() == -1


def test_upstream_refused_resets_the_client() -> None:
    with refusing_port() as dead, ChaosProxy(dead, connect_timeout=1) as proxy, connect(proxy) as c:
        with pytest.raises(ConnectionResetError):
            c.recv(10)
        proxy.wait_for(lambda p: p.upstream_failures == 1)


def test_bytes_that_break_framing_pass_through_untouched() -> None:
    with echo_peer() as echo, ChaosProxy(echo) as proxy, connect(proxy) as c:
        c.sendall(request(1))
        assert [f.qid for f in read_frames(c, 1)] == [1]
        garbage = b"\x00\x00\x00\x30GARBAGE-GARBAGE-GARBAGE-GARBAGE"
        c.sendall(garbage)
        got = b""
        while len(got) < len(garbage):
            got += c.recv(100)
        assert got == garbage and proxy.protocol_errors >= 1
        c.sendall(b"more")
        assert c.recv(10) == b"more"  # from then on bytes are forwarded as they are


def test_large_reads_and_a_closing_upstream_flush_what_is_queued() -> None:
    big = b"z" * 200_000
    with silent_peer() as sink, ChaosProxy(sink) as proxy, connect(proxy) as c:
        c.sendall(request(1, big) * 3)
        sink.wait_frames(3)
        assert proxy.bytes_received["upstream"] == 3 * (24 + len(big))
    with echo_peer() as echo, ChaosProxy(echo) as proxy, connect(proxy) as c:
        with proxy.injector.injected(latency(0.1, direction="downstream")):
            c.sendall(request(7))
            c.shutdown(gsocket.SHUT_WR)  # EOF upstream: the queued, delayed echo still arrives
            assert [f.qid for f in read_frames(c, 1)] == [7]


def test_a_writer_that_fails_closes_the_link(server: Any) -> None:
    with ChaosProxy(server) as proxy, connect(proxy) as c:
        c.sendall(request(1))
        read_frames(c, 1)
        (link,) = proxy.links
        link.client.close()  # the writer's next send fails
        link.writers["downstream"].put(b"x")
        proxy.wait_for(lambda p: not p.links)
        link.freeze()  # a closed link does not freeze
        assert proxy.links_frozen == 0


def test_close_with_open_links_and_faults_releases_everything(server: Any) -> None:
    proxy = ChaosProxy(server).start()
    socks = [connect(proxy) for _ in range(3)]
    proxy.injector.add(latency(1.0))
    for i, s in enumerate(socks):
        s.sendall(request(i))
    proxy.wait_for(lambda p: p.frames_delayed == 3)
    proxy.injector.add(service_down())
    proxy.close()
    assert proxy.connections == 0 and not proxy.links
    for s in socks:
        s.close()


def test_proxy_accepts_an_address_tuple_and_reports_its_state(server: Any) -> None:
    with ChaosProxy(server.address) as proxy:
        assert proxy.upstream == server.address
        assert "requests_seen=0" in repr(proxy)
    with pytest.raises(ConnectionRefusedError):  # a closed proxy refuses connections
        connect(proxy)


def test_module_passes_under_patch_all() -> None:
    run = run_module_patched(__file__)
    assert run.returncode == 0, run.report()
