"""Connection: multiplexing, timeouts, faults, reconnection, heartbeat, pushes."""

from __future__ import annotations

import socket as stdsocket
import struct
from collections.abc import Iterator
from typing import Any

import gevent
import pytest
from gevent.server import StreamServer

from nexus_green.connection import Connection, ConnectionOptions
from nexus_green.connection.backoff import FixedInterval
from nexus_green.errors import (
    ConfigurationError,
    ConnectionClosed,
    ConnectionLost,
    ConnectionRefused,
    ConnectTimeout,
    FrameTooLarge,
    HeartbeatTimeout,
    LocalProtocolError,
    RemoteProtocolError,
    RequestTimeout,
)
from nexus_green.events import EventBus
from nexus_green.protocol.frames import (
    Frame,
    FrameDecoder,
    encode_frame,
    heartbeat_frame,
)
from nexus_green.testing import (
    FID_CLOSE,
    FID_DELAY,
    FID_GARBAGE,
    FID_PUSH,
    FID_SILENT,
    EmbeddedServer,
    Reply,
)
from nexus_green.timers import hub_scheduler

pytestmark = pytest.mark.usefixtures("leakcheck")


@pytest.fixture
def server() -> Iterator[EmbeddedServer]:
    with EmbeddedServer() as s:
        yield s


IO_GREENLETS = [False]


@pytest.fixture(autouse=True, params=["hub-callbacks", "greenlets"])
def io_mode(request: pytest.FixtureRequest) -> Iterator[str]:
    """Every test here runs twice: plain TCP on hub callbacks (the default) and on reader/writer greenlets (as TLS)."""
    IO_GREENLETS[0] = request.param == "greenlets"
    yield request.param
    IO_GREENLETS[0] = False


def opts(**kw: Any) -> ConnectionOptions:
    kw.setdefault("io_greenlets", IO_GREENLETS[0])
    kw.setdefault("heartbeat_interval", None)
    kw.setdefault("reconnect", False)
    return ConnectionOptions(**kw)


def free_port() -> int:
    s = stdsocket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return int(port)


def test_concurrent_requests_share_one_socket_and_match_by_qid(server: EmbeddedServer) -> None:
    with Connection(server.url, options=opts()) as conn:
        delays = [0.05, 0.01, 0.03, 0.0, 0.02] * 4
        results: list[Any] = [None] * len(delays)

        def call(i: int) -> None:
            results[i] = conn.request(b"%.3f" % delays[i], fid=FID_DELAY, timeout=5)

        gevent.joinall([gevent.spawn(call, i) for i in range(len(delays))], timeout=10, raise_error=True)
        assert all(r.body == b"ok" and r.code == 200 for r in results)
        assert len({r.qid for r in results}) == len(delays)
        assert server.connections_accepted == 1
        assert conn.in_flight == 0


def test_out_of_order_responses_reach_their_callers() -> None:
    order: list[int] = []
    server = EmbeddedServer()
    server.register(50, lambda f: (gevent.sleep(float(f.body)), f.body)[1])
    with server, Connection(server.url, options=opts()) as conn:

        def call(delay: bytes) -> None:
            r = conn.request(delay, fid=50, timeout=5)
            assert r.body == delay
            order.append(int(float(delay) * 100))

        gevent.joinall([gevent.spawn(call, d) for d in (b"0.06", b"0.01", b"0.03")], timeout=5, raise_error=True)
    assert order == [1, 3, 6]


def test_concurrent_frames_are_coalesced_into_one_write(server: EmbeddedServer) -> None:
    bus = EventBus()
    batches: list[int] = []
    bus.subscribe(lambda e: batches.append(e.attrs["frames"]), prefix="io.sent")
    with Connection(server.url, options=opts(), bus=bus) as conn:
        gevent.joinall([gevent.spawn(conn.request, b"x", 1) for _ in range(50)], timeout=5, raise_error=True)
    assert sum(batches) == 50
    assert max(batches) > 1, batches


def test_timeout_abandons_only_its_qid_and_late_response_is_counted(server: EmbeddedServer) -> None:
    bus = EventBus()
    late: list[int] = []
    bus.subscribe(lambda e: late.append(e.attrs["qid"]), prefix="request.late")
    with Connection(server.url, options=opts(), bus=bus) as conn:
        with pytest.raises(RequestTimeout, match="only this request was abandoned"):
            conn.request(b"0.2", fid=FID_DELAY, timeout=0.05)
        assert conn.in_flight == 0
        assert conn.request(b"still fine", fid=1, timeout=5).body == b"still fine"
        gevent.sleep(0.3)
        assert conn.late_responses == 1
        assert len(late) == 1
        assert conn.state == "connected"


def test_many_deadlines_in_different_buckets_expire_in_order(server: EmbeddedServer) -> None:
    with Connection(server.url, options=opts()) as conn:
        expired: list[float] = []
        armed_before = hub_scheduler().armed

        def call(t: float) -> None:
            with pytest.raises(RequestTimeout):
                conn.request(b"", fid=FID_SILENT, timeout=t)
            expired.append(t)

        gevent.joinall([gevent.spawn(call, t) for t in (0.09, 0.03, 0.06)], timeout=5, raise_error=True)
        assert expired == [0.03, 0.06, 0.09]
        assert conn.in_flight == 0 and hub_scheduler().armed == armed_before


def test_outer_gevent_timeout_does_not_poison_the_connection(server: EmbeddedServer) -> None:
    with Connection(server.url, options=opts()) as conn:
        with pytest.raises(gevent.Timeout):
            with gevent.Timeout(0.05):
                conn.request(b"0.2", fid=FID_DELAY, timeout=5)
        assert conn.in_flight == 0
        assert conn.request(b"next", fid=1).body == b"next"
        gevent.sleep(0.3)
        assert conn.late_responses == 1


def test_peer_closing_fails_every_pending_request_with_the_cause(server: EmbeddedServer) -> None:
    with Connection(server.url, options=opts()) as conn:
        waiting = [gevent.spawn(conn.request, b"", FID_SILENT) for _ in range(5)]
        gevent.sleep(0.02)
        with pytest.raises(ConnectionLost, match="closed the connection"):
            conn.request(b"", fid=FID_CLOSE, timeout=5)
        gevent.joinall(waiting, timeout=5)
        assert all(isinstance(g.exception, ConnectionLost) for g in waiting)
        assert conn.state == "closed"
        with pytest.raises(ConnectionLost, match="gave up"):
            conn.request(b"x", fid=1)


def test_peer_closing_mid_frame_is_connection_lost() -> None:
    def handler(sock: Any, addr: Any) -> None:
        FrameDecoder().feed(sock.recv(1024))
        sock.sendall(encode_frame(Frame(qid=1, res=1, code=200, body=b"x" * 100))[:30])
        sock.close()

    srv = StreamServer(("127.0.0.1", 0), handler)
    srv.start()
    try:
        with Connection(f"tcp://127.0.0.1:{srv.server_port}", options=opts()) as conn:
            with pytest.raises(ConnectionLost, match="bytes of an incomplete frame"):
                conn.request(b"x", fid=1, timeout=5)
    finally:
        srv.stop()


def test_garbage_from_peer_fails_pending_with_protocol_error(server: EmbeddedServer) -> None:
    bus = EventBus()
    errors: list[Any] = []
    bus.subscribe(errors.append, prefix="protocol.error")
    with Connection(server.url, options=opts(), bus=bus) as conn:
        with pytest.raises(RemoteProtocolError, match="bad tag"):
            conn.request(b"", fid=FID_GARBAGE, timeout=5)
        assert conn.state == "closed"
    assert len(errors) == 1 and errors[0].attrs["offset"] == 4


def test_oversized_frame_is_refused(server: EmbeddedServer) -> None:
    with Connection(server.url, options=opts(max_frame_size=64)) as conn:
        with pytest.raises(FrameTooLarge, match="exceeds max_frame_size 64"):
            conn.request(b"y" * 100, fid=1, timeout=5)


def test_connect_refused_leaves_nothing_behind() -> None:
    conn = Connection(f"tcp://127.0.0.1:{free_port()}", options=opts())
    with pytest.raises(ConnectionRefused):
        conn.connect()
    assert conn.state == "closed"
    with pytest.raises(ConnectionClosed):
        conn.connect()


def test_calls_after_close_fail_with_connection_closed(server: EmbeddedServer) -> None:
    conn = Connection(server.url, options=opts()).connect()
    pending = gevent.spawn(conn.request, b"", FID_SILENT)
    gevent.sleep(0.02)
    conn.close()
    conn.close()  # idempotent
    pending.join(timeout=5)
    assert isinstance(pending.exception, ConnectionClosed)
    with pytest.raises(ConnectionClosed, match="closed by its owner"):
        conn.request(b"x")
    with pytest.raises(ConnectionClosed):
        conn.send(b"x")


def test_close_with_drain_waits_for_in_flight(server: EmbeddedServer) -> None:
    conn = Connection(server.url, options=opts()).connect()
    g = gevent.spawn(conn.request, b"0.05", FID_DELAY)
    gevent.sleep(0.01)
    conn.close(drain=2.0)
    g.join(timeout=5)
    assert g.value is not None and g.value.body == b"ok"


def test_reconnects_after_the_server_drops_the_link(server: EmbeddedServer) -> None:
    bus = EventBus()
    events: list[str] = []
    bus.subscribe(lambda e: events.append(e.name), prefix="reconnect.")
    with Connection(server.url, options=opts(reconnect=FixedInterval(0.02)), bus=bus) as conn:
        conn.request(b"a", fid=1)
        assert server.drop_connections() == 1
        assert _settle(lambda: conn.state != "connected")
        r = conn.request(b"b", fid=1, timeout=5)  # waits for the link, then succeeds
        assert r.body == b"b"
        assert conn.reconnects == 1
        assert "reconnect.scheduled" in events and "reconnect.succeeded" in events
        assert [h[2] for h in conn.lifecycle.history][-3:] == ["reconnecting", "connecting", "connected"]


def test_server_killed_and_restarted_client_comes_back() -> None:
    port = free_port()
    first = EmbeddedServer(port=port).start()
    conn = Connection(f"tcp://127.0.0.1:{port}", options=opts(reconnect=FixedInterval(0.05))).connect()
    try:
        assert conn.request(b"1", fid=1).body == b"1"
        first.stop()
        gevent.sleep(0.15)
        assert conn.state in ("reconnecting", "connecting")
        with EmbeddedServer(port=port):
            assert conn.request(b"2", fid=1, timeout=5).body == b"2"
            assert conn.reconnects == 1
    finally:
        conn.close()


def test_fail_fast_while_reconnecting(server: EmbeddedServer) -> None:
    with Connection(server.url, options=opts(reconnect=FixedInterval(5.0), fail_fast=True)) as conn:
        conn.request(b"a", fid=1)
        server.drop_connections()
        gevent.sleep(0.05)
        with pytest.raises(ConnectionLost, match="fail_fast"):
            conn.request(b"b", fid=1)


def test_waiting_for_reconnect_is_bounded_by_the_request_timeout(server: EmbeddedServer) -> None:
    with Connection(server.url, options=opts(reconnect=FixedInterval(5.0))) as conn:
        conn.request(b"a", fid=1)
        server.drop_connections()
        gevent.sleep(0.05)
        with pytest.raises(ConnectTimeout, match="still reconnecting") as caught:
            conn.request(b"b", fid=1, timeout=0.05)
        assert caught.value.phase == "connect"  # it never left: not sent


def test_gives_up_after_max_attempts() -> None:
    port = free_port()
    server = EmbeddedServer(port=port).start()
    conn = Connection(f"tcp://127.0.0.1:{port}", options=opts(reconnect=FixedInterval(0.01, max_attempts=2)))
    conn.connect()
    server.stop()
    assert _settle(lambda: conn.state == "closed")
    assert isinstance(conn.last_error, ConnectionRefused)
    conn.close()


def test_heartbeat_timeout_declares_the_link_dead() -> None:
    bus = EventBus()
    seen: list[str] = []
    bus.subscribe(lambda e: seen.append(e.name), prefix="heartbeat.")
    with EmbeddedServer(heartbeat_echo=False) as server:
        with Connection(server.url, options=opts(heartbeat_interval=0.05, heartbeat_timeout=0.05), bus=bus) as conn:
            assert _settle(lambda: conn.state == "closed")
            assert isinstance(conn.last_error, HeartbeatTimeout)
    assert "heartbeat.sent" in seen and "heartbeat.timeout" in seen


def test_heartbeat_round_trips_are_measured(server: EmbeddedServer) -> None:
    bus = EventBus()
    rtts: list[float] = []
    bus.subscribe(lambda e: rtts.append(e.attrs["rtt"]), prefix="heartbeat.rtt")
    with Connection(server.url, options=opts(heartbeat_interval=0.03), bus=bus) as conn:
        assert _settle(lambda: len(rtts) >= 2)
        assert conn.state == "connected"
    assert all(0 <= r < 1 for r in rtts)
    assert server.heartbeats_received >= 2


def test_server_heartbeat_is_answered_and_pushes_are_delivered() -> None:
    got: list[bytes] = []

    def handler(sock: Any, addr: Any) -> None:
        sock.sendall(heartbeat_frame())
        sock.sendall(encode_frame(Frame(qid=0, fid=9, body=b"hello")))
        sock.sendall(encode_frame(Frame(qid=77, fid=9, res=1, code=200, body=b"stray")))
        got.append(sock.recv(1024))
        gevent.sleep(0.2)

    srv = StreamServer(("127.0.0.1", 0), handler)
    srv.start()
    pushes: list[Frame] = []
    try:
        with Connection(f"tcp://127.0.0.1:{srv.server_port}", options=opts(), on_push=pushes.append) as conn:
            assert _settle(lambda: len(pushes) == 2 and bool(got))
            assert conn.pushes == 2
    finally:
        srv.stop()
    assert [p.body for p in pushes] == [b"hello", b"stray"]
    [answer] = FrameDecoder().feed(got[0])
    assert answer.is_heartbeat and answer.res == 1


def test_push_callback_errors_are_contained(server: EmbeddedServer) -> None:
    def bad(frame: Frame) -> None:
        raise RuntimeError("boom")

    with Connection(server.url, options=opts(), on_push=bad) as conn:
        assert conn.request(b"3", fid=FID_PUSH).body == b"pushed"
        assert conn.request(b"x", fid=1).body == b"x"
        assert conn.pushes == 3


def test_send_is_fire_and_forget(server: EmbeddedServer) -> None:
    with Connection(server.url, options=opts()) as conn:
        qid = conn.send(b"one-way", fid=1)
        assert qid > 0
        assert _settle(lambda: conn.late_responses == 1)
        assert conn.pushes == 0


def test_headers_round_trip_and_strict_mode_refuses_them() -> None:
    server = EmbeddedServer()
    server.register(60, lambda f: Reply(b"h", headers={"seen": f.headers.get("trace-id", "")}))
    with server:
        with Connection(server.url, options=opts()) as conn:
            r = conn.request(b"", fid=60, headers={"trace-id": "t-1"})
            assert dict(r.headers) == {"seen": "t-1"}
        with Connection(server.url, options=opts(strict=True)) as conn:
            with pytest.raises(LocalProtocolError, match="strict mode"):
                conn.request(b"", fid=60, headers={"trace-id": "t-1"})


def test_qids_wrap_around_and_skip_pending(server: EmbeddedServer) -> None:
    with Connection(server.url, options=opts()) as conn:
        conn.session.last_qid = 0xFFFFFFFE
        first = gevent.spawn(conn.request, b"0.05", FID_DELAY)
        gevent.sleep(0.01)
        assert conn.session.is_pending(0xFFFFFFFF)
        conn.session.last_qid = 0xFFFFFFFE  # the next Qid would collide with the pending one
        r = conn.request(b"x", fid=1)
        assert r.qid == 1
        assert first.get(timeout=5).qid == 0xFFFFFFFF
        assert conn.request(b"y", fid=1).qid == 2


def test_options_are_validated() -> None:
    with pytest.raises(ConfigurationError, match="request_timeout"):
        ConnectionOptions(request_timeout=0)
    with pytest.raises(ConfigurationError, match="max_frame_size"):
        ConnectionOptions(max_frame_size=10)
    with pytest.raises(ConfigurationError, match="recv_buffer_size"):
        ConnectionOptions(recv_buffer_size=10)
    with pytest.raises(ConfigurationError, match="happy_eyeballs_delay"):
        ConnectionOptions(happy_eyeballs_delay=0)
    with pytest.raises(ConfigurationError, match="max_write_buffer"):
        ConnectionOptions(max_write_buffer=10)
    with pytest.raises(ConfigurationError, match="socket_options"):
        ConnectionOptions(socket_options=((6, 1),))  # type: ignore[arg-type]


def test_a_socket_option_the_os_refuses_is_a_configuration_error(server: EmbeddedServer) -> None:
    with pytest.raises(ConfigurationError, match="socket option"):
        Connection(server.url, options=opts(socket_options=((6, 99999, 1),))).connect(timeout=5)


def test_lifecycle_events_and_repr(server: EmbeddedServer) -> None:
    bus = EventBus()
    states: list[str] = []
    bus.subscribe(lambda e: states.append(e.attrs["new"]), prefix="connection.state")
    conn = Connection(server.url, options=opts(), bus=bus)
    assert "state=idle" in repr(conn)
    conn.request(b"x", fid=1)  # connects on first use
    assert "state=connected" in repr(conn) and "requests=1" in repr(conn)
    conn.close()
    assert states == ["connecting", "connected", "closing", "closed"]


def test_connect_events_carry_phase_timings(server: EmbeddedServer) -> None:
    bus = EventBus()
    done: list[Any] = []
    bus.subscribe(done.append, prefix="connect.complete")
    with Connection(server.url, options=opts(), bus=bus) as conn:
        assert conn.last_connect is not None
        assert set(conn.last_connect.phases) == {"dns", "tcp"}
    assert set(done[0].attrs["phases"]) == {"dns", "tcp"}


def test_default_reconnect_strategy_is_exponential(server: EmbeddedServer) -> None:
    conn = Connection(server.url, options=ConnectionOptions(heartbeat_interval=None))
    assert type(conn._strategy).__name__ == "ExponentialBackoff"
    assert Connection(server.url, options=ConnectionOptions(reconnect=True))._strategy is not None


def test_struct_of_late_frame_matches_protocol() -> None:
    # A pure sanity check of the helper used above: a response frame's header layout.
    data = encode_frame(Frame(qid=5, fid=1, res=1, code=200, body=b"z"))
    assert struct.unpack_from(">IHHBBIII", data)[5] == 5


def _settle(check: Any, timeout: float = 3.0) -> bool:
    with gevent.Timeout(timeout, False):
        while not check():
            gevent.sleep(0.01)
        return True
    return False


def test_a_bug_in_the_reader_fails_requests_instead_of_hanging(server: EmbeddedServer, monkeypatch: Any) -> None:
    with Connection(server.url, options=opts()) as conn:
        conn.request(b"ok", fid=1)

        def broken(frames: Any, now: float) -> Any:
            raise RuntimeError("bug in dispatch")

        monkeypatch.setattr(conn, "_dispatch", broken)
        with pytest.raises(ConnectionLost, match="internal error in the reader") as info:
            conn.request(b"x", fid=1, timeout=5)
        assert isinstance(info.value.__cause__, RuntimeError)
        assert conn.state == "closed"


def test_a_bug_in_the_writer_fails_requests_instead_of_hanging(server: EmbeddedServer, monkeypatch: Any) -> None:
    with Connection(server.url, options=opts()) as conn:
        from nexus_green.transport.stream import Stream

        def broken(self: Any, data: Any) -> None:
            raise RuntimeError("bug in sendall")

        monkeypatch.setattr(Stream, "sendall", broken)
        monkeypatch.setattr(Stream, "sendmsg_nowait", broken)
        with pytest.raises(ConnectionLost, match="internal error in the writer"):
            conn.request(b"x", fid=1, timeout=5)


def test_io_stats_are_exact_and_flushed_on_close(server: EmbeddedServer) -> None:
    bus = EventBus()
    stats: list[Any] = []
    bus.subscribe(lambda e: stats.append(e.attrs), prefix="io.stats")
    conn = Connection(server.url, options=opts(), bus=bus).connect()
    conn.flush_stats()  # nothing yet: no event
    for _ in range(5):
        conn.request(b"abc", fid=1)
    conn.request(b"404", fid=3)  # FID_ERROR: a non-200 answer
    conn.close()
    assert sum(s["completed"] for s in stats) == 6
    assert sum(s["non_ok"] for s in stats) == 1
    assert sum(len(s["latencies"]) for s in stats) == 6
    assert sum(s["frames_sent"] for s in stats) == 6
    assert sum(s["bytes_sent"] for s in stats) == 5 * 27 + 27
    quiet = Connection(server.url, options=opts()).connect()
    quiet.flush_stats()  # nobody listens on default_bus for io.stats: a no-op
    quiet.close()


def test_traffic_counters_are_kept_with_nobody_listening(server: EmbeddedServer) -> None:
    bus = EventBus()  # no subscribers at all
    with Connection(server.url, options=opts(), bus=bus).connect() as conn:
        for _ in range(4):
            conn.request(b"abc", fid=1)
        conn.request(b"404", fid=3)  # FID_ERROR: a non-200 answer
        assert (conn.responses, conn.responses_non_ok) == (5, 1)
        assert (conn.frames_sent, conn.frames_received) == (5, 5)
        assert conn.bytes_sent == 5 * 27
        assert conn.bytes_received >= 5 * 24  # headers at least; the error body varies
        assert conn.iostats.pending_latencies == 0  # latencies only while someone listens


def test_a_late_listener_hears_only_what_happens_after_it_subscribed(server: EmbeddedServer) -> None:
    bus = EventBus()
    with Connection(server.url, options=opts(), bus=bus).connect() as conn:
        for _ in range(3):
            conn.request(b"before", fid=1)
        stats: list[Any] = []
        off = bus.subscribe(lambda e: stats.append(e.attrs), prefix="io.stats")
        conn.flush_stats()  # flags refreshed here: nothing since the subscription
        assert stats == []
        for _ in range(2):
            conn.request(b"after", fid=1)
        conn.flush_stats()
        assert [(s["completed"], s["frames_sent"], len(s["latencies"])) for s in stats] == [(2, 2, 2)]
        off()
        conn.request(b"unheard", fid=1)
        conn.flush_stats()
        assert len(stats) == 1 and conn.responses == 6


def test_a_listener_that_comes_after_another_left_hears_only_new_traffic(server: EmbeddedServer) -> None:
    # send() never refreshes the cached flags: the change of audience must be
    # noticed at the flush, not only by a request.
    bus = EventBus()
    with Connection(server.url, options=opts(), bus=bus).connect() as conn:
        off = bus.subscribe(lambda e: None, prefix="io.stats")
        conn.flush_stats()
        off()
        for _ in range(5):
            conn.send(b"unheard", fid=1)
        gevent.sleep(0.1)
        assert conn.frames_sent == 5
        heard: list[Any] = []
        bus.subscribe(lambda e: heard.append(e.attrs["frames_sent"]), prefix="io.stats")
        conn.flush_stats()
        assert heard == []
        conn.request(b"heard", fid=1)
        conn.flush_stats()
        assert heard == [1]


def test_a_listener_that_flushes_again_gets_nothing_twice(server: EmbeddedServer) -> None:
    bus = EventBus()
    stats: list[Any] = []
    with Connection(server.url, options=opts(), bus=bus).connect() as conn:

        def listener(e: Any) -> None:
            stats.append(e.attrs["completed"])
            conn.flush_stats()  # a re-entrant read, as a tracker query inside a listener would do

        bus.subscribe(listener, prefix="io.stats")
        for _ in range(3):
            conn.request(b"x", fid=1)
        conn.flush_stats()
        assert stats == [3]


def test_a_connection_emits_io_stats_by_itself_when_latencies_pile_up(server: EmbeddedServer, monkeypatch: Any) -> None:
    import nexus_green.connection.iostats as module

    monkeypatch.setattr(module, "STATS_MAX_LATENCIES", 4)
    bus = EventBus()
    stats: list[Any] = []
    bus.subscribe(lambda e: stats.append(e.attrs), prefix="io.stats")
    with Connection(server.url, options=opts(), bus=bus).connect() as conn:
        for _ in range(10):  # one request per recv batch: a flush after the 4th and the 8th
            conn.request(b"x", fid=1)
        assert [len(s["latencies"]) for s in stats] == [4, 4]
        assert sum(s["completed"] for s in stats) == 8


def _hammer(conn: Connection, n: int, concurrency: int) -> list[bytes]:
    out: list[bytes] = []

    def worker(k: int) -> None:
        for i in range(n // concurrency):
            out.append(conn.request(b"%d-%d" % (k, i), fid=1, timeout=5).body)

    gevent.joinall([gevent.spawn(worker, k) for k in range(concurrency)], timeout=20, raise_error=True)
    return out


def test_callers_flush_full_batches_eagerly_and_responses_stay_matched(
    server: EmbeddedServer, monkeypatch: Any
) -> None:
    from nexus_green.transport.stream import Stream

    calls: list[int] = []
    real = Stream.try_send

    def counting(self: Stream, data: bytes) -> int:
        calls.append(len(data))
        return real(self, data)

    real_sendmsg = Stream.sendmsg_nowait

    def counting_sendmsg(self: Stream, buffers: Any) -> int:
        if gevent.getcurrent() is not gevent.get_hub():  # a caller, not the flush callback
            calls.append(len(buffers))
        return real_sendmsg(self, buffers)

    monkeypatch.setattr(Stream, "try_send", counting)
    monkeypatch.setattr(Stream, "sendmsg_nowait", counting_sendmsg)
    with Connection(server.url, options=opts()) as conn:
        assert conn._flush_at > 10**6  # no eager flush before the first tuning
        out = _hammer(conn, 4096, 64)
        assert sorted(out) == sorted(b"%d-%d" % (k, i) for k in range(64) for i in range(64))
        assert conn._flush_at >= 16
        assert calls, "no caller ever flushed eagerly"


@pytest.mark.parametrize("mode", ["partial", "full-buffer", "error"])
def test_what_an_eager_flush_does_not_send_the_writer_sends_in_order(
    server: EmbeddedServer, monkeypatch: Any, mode: str
) -> None:
    from nexus_green.errors import ConnectionLost as Lost
    from nexus_green.transport.stream import Stream

    real = Stream.try_send

    def limited(self: Stream, data: bytes) -> int:
        if mode == "partial":
            return real(self, data[: len(data) // 2 + 3])  # cut inside a frame
        if mode == "full-buffer":
            return 0
        raise Lost("pretend the kernel refused")

    monkeypatch.setattr(Stream, "try_send", limited)
    with Connection(server.url, options=opts()) as conn:
        conn._flush_at = 16
        out = _hammer(conn, 2048, 64)
        assert len(out) == 2048 and len(set(out)) == 2048
        assert conn.state == "connected"


def test_try_send_on_plain_tls_closed_and_full_streams() -> None:
    import socket as std

    from gevent import socket as gsock

    from nexus_green.transport.stream import Stream

    a, b = gsock.socketpair()
    s = Stream(a, "pair")
    assert s.try_send(b"hello") == 5 and b.recv(5) == b"hello"
    a.setsockopt(std.SOL_SOCKET, std.SO_SNDBUF, 4096)
    sent = 0
    while True:  # fill the socket buffer: the kernel takes nothing more
        n = s.try_send(b"x" * 65536)
        if n == 0:
            break
        sent += n
    assert sent > 0
    b.close()
    with pytest.raises(ConnectionLost):
        for _ in range(100):
            s.try_send(b"y" * 65536)  # the peer is gone: EPIPE or reset, mapped
    s.close()
    assert s.try_send(b"z") == 0  # closed
    assert Stream(object(), "not a gevent socket").try_send(b"z") == 0  # e.g. TLS: left to sendall


def test_a_bug_while_reconnecting_is_retried_not_fatal(server: EmbeddedServer, monkeypatch: Any) -> None:
    with Connection(server.url, options=opts(reconnect=FixedInterval(0.01))) as conn:
        conn.request(b"a", fid=1)
        real_open = conn._open
        calls: list[int] = []

        def flaky_open() -> None:
            calls.append(1)
            if len(calls) == 1:
                raise RuntimeError("bug on the first reconnect attempt")
            real_open()

        monkeypatch.setattr(conn, "_open", flaky_open)
        server.drop_connections()
        assert _settle(lambda: conn.state != "connected")
        assert conn.request(b"b", fid=1, timeout=5).body == b"b"
        assert len(calls) >= 2 and conn.reconnects == 1


def test_responses_before_garbage_in_the_same_read_are_delivered() -> None:
    # The peer answers the first of two requests and sends garbage in the same
    # write: the answer is delivered, the other request fails with the
    # protocol error, and the link is closed.
    from nexus_green.protocol.frames import Frame, FrameDecoder, encode_frame
    from nexus_green.testing import scripted_peer

    bus = EventBus()
    errors: list[Any] = []
    bus.subscribe(errors.append, prefix="protocol.error")

    def peer(sock: Any) -> None:
        dec = FrameDecoder()
        got: list[Any] = []
        while len(got) < 2:
            got += dec.feed(sock.recv(4096))
        answer = encode_frame(Frame(qid=got[0].qid, fid=got[0].fid, code=200, res=1, body=b"first"))
        sock.sendall(answer + b"\x00\x00\x00\x20" + b"G" * 40)
        sock.recv(1)  # until the client closes

    with scripted_peer(peer) as (host, port):
        with Connection(f"tcp://{host}:{port}", options=opts(), bus=bus) as conn:
            calls = [gevent.spawn(conn.request, body, 1, timeout=5) for body in (b"a", b"b")]
            gevent.joinall(calls, timeout=5)
            outcomes = sorted((type(c.value).__name__ if c.successful() else type(c.exception).__name__) for c in calls)
            answered = [c.value for c in calls if c.successful()]
            assert conn.state == "closed"
    assert outcomes == ["RemoteProtocolError", "Response"]
    assert answered[0].body == b"first"
    assert len(errors) == 1
