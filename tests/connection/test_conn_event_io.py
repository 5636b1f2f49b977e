"""Plain TCP on hub callbacks (and the reader/writer greenlets it replaced), proved over real sockets.

The event path: a read watcher recv_into's a per-hub scratch (a big frame gets
a buffer of its own) and switches each answered caller in from the hub; one
flush callback per batch writes queued frames with sendmsg, large bodies as
``(prefix, body)`` without a copy; a write watcher runs only while the kernel
is full; heartbeats are timers. Most tests run in both io modes (the
``io_mode`` fixture); a few are about the event path only. The whole module
runs again after ``gevent.monkey.patch_all()`` (the last test).
"""

from __future__ import annotations

import gc
import logging
import os
import pickle
import socket as stdsocket
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Iterator
from typing import Any

import gevent
import gevent.event
import pytest

from nexus_green import Client
from nexus_green.connection import Connection, ConnectionOptions
from nexus_green.errors import ConnectionClosed, ConnectionLost, HeartbeatTimeout, NexusError
from nexus_green.events import EventBus
from nexus_green.greenlets import live_greenlets
from nexus_green.protocol.frames import HEARTBEAT_FID, SEPARATE_BODY, Frame, FrameDecoder, encode_frame
from nexus_green.protocol.messages import Response
from nexus_green.testing import (
    FID_ECHO,
    FID_PUSH,
    FID_SILENT,
    EmbeddedServer,
    accept_and_stall,
    run_module_patched,
    scripted_peer,
    silent_peer,
    slow_reader,
)

pytestmark = pytest.mark.usefixtures("leakcheck")

MODE = {"io_greenlets": False}
MiB = 1 << 20


@pytest.fixture(params=["hub-callbacks", "greenlets"])
def io_mode(request: pytest.FixtureRequest) -> Iterator[str]:
    MODE["io_greenlets"] = request.param == "greenlets"
    yield request.param
    MODE["io_greenlets"] = False


def opts(**kw: Any) -> ConnectionOptions:
    kw.setdefault("io_greenlets", MODE["io_greenlets"])
    kw.setdefault("heartbeat_interval", None)
    kw.setdefault("reconnect", False)
    return ConnectionOptions(**kw)


def io_greenlets_of(conn: Connection) -> list[str]:
    return sorted(g.name for g in live_greenlets() if g.name.startswith(f"nexus_green:{conn.conn_id}:"))


def pattern(seed: int, size: int) -> bytes:
    """A body where every byte depends on its position and the seed: a shifted or swapped chunk shows."""
    block = bytes((seed * 131 + i * 7) & 0xFF for i in range(251))
    return (block * (size // len(block) + 1))[:size]


def spawn_peer(script: str, *args: str) -> tuple[subprocess.Popen[str], int]:
    """A peer in another process (so its work is not on our hub): it prints its port first."""
    # -S: no site-packages, so no coverage hook either (the peer is killed, it would leave a broken data file).
    proc = subprocess.Popen([sys.executable, "-S", "-c", script, *args], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.strip().isdigit(), line
    return proc, int(line)


def stop_peer(proc: subprocess.Popen[str]) -> None:
    proc.kill()
    proc.wait(timeout=10)
    assert proc.stdout is not None
    proc.stdout.close()


def wait_for(check: Any, timeout: float = 5.0, step: float = 0.005) -> bool:
    end = time.monotonic() + timeout
    while not check():
        if time.monotonic() > end:
            return False
        gevent.sleep(step)
    return True


# ---------------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("size", [MiB, 64 * 1024, SEPARATE_BODY, SEPARATE_BODY - 1, 0])
def test_echo_round_trip_byte_for_byte(io_mode: str, size: int) -> None:
    with EmbeddedServer() as server, Connection(server.url, options=opts()) as conn:
        body = pattern(size % 251, size)
        r = conn.request(body, fid=FID_ECHO, timeout=10)
        assert r.code == 200
        assert type(r.body) is bytes
        assert r.body == body
        assert conn.in_flight == 0 and conn.buffered() == (0, 0)
        expected = ["reader", "writer"] if io_mode == "greenlets" else []
        assert [n.rsplit(":", 1)[1] for n in io_greenlets_of(conn)] == expected


def test_concurrent_callers_mixed_sizes_each_get_their_own_bytes(io_mode: str) -> None:
    sizes = [MiB, 64 * 1024, 100, SEPARATE_BODY, 70_000, 0, 3 * 64 * 1024, 5] * 3
    with EmbeddedServer() as server, Connection(server.url, options=opts()) as conn:
        results: list[Any] = [None] * len(sizes)

        def call(i: int) -> None:
            body = pattern(i, sizes[i])
            r = conn.request(body, fid=FID_ECHO, timeout=20)
            results[i] = (r.body == body, type(r.body) is bytes, len(r.body))

        gevent.joinall([gevent.spawn(call, i) for i in range(len(sizes))], timeout=30, raise_error=True)
        assert results == [(True, True, s) for s in sizes]
        assert server.connections_accepted == 1
        assert conn.responses == len(sizes) and conn.in_flight == 0
        assert conn.frames_sent == len(sizes)
        assert conn.bytes_sent == sum(24 + s for s in sizes)
        assert conn.bytes_received == sum(24 + s for s in sizes)


def test_client_round_trips_large_bodies_concurrently(io_mode: str) -> None:
    with (
        EmbeddedServer() as server,
        Client(server.url, heartbeat_interval=None, io_greenlets=MODE["io_greenlets"], max_size=1) as client,
    ):
        bodies = [pattern(i, MiB if i % 2 else 64 * 1024) for i in range(6)]
        jobs = [gevent.spawn(client.request, b, FID_ECHO, timeout=20) for b in bodies]
        gevent.joinall(jobs, timeout=30, raise_error=True)
        for job, body in zip(jobs, bodies, strict=True):
            assert job.value.body == body


def test_response_body_pickles_and_is_plain_bytes(io_mode: str) -> None:
    with EmbeddedServer() as server, Connection(server.url, options=opts()) as conn:
        body = pattern(3, 200_000)  # a big frame: received into a buffer of its own
        r = conn.request(body, fid=FID_ECHO, timeout=10)
        assert type(r.body) is bytes
        copy = pickle.loads(pickle.dumps(r.body))
        assert copy == body
        again = pickle.loads(pickle.dumps(r))
        assert isinstance(again, Response) and again.body == body
        # A later read reuses the receive scratch: the earlier body must not change.
        small = conn.request(b"\xee" * 1000, fid=FID_ECHO, timeout=10)
        assert small.body == b"\xee" * 1000
        assert r.body == body


def test_tls_connection_keeps_reader_and_writer_greenlets() -> None:
    from nexus_green.testing import make_test_certificates

    with make_test_certificates() as kit:
        with EmbeddedServer(tls=kit.server_context()) as server:
            with Connection(server.url, options=opts(tls=kit.client_config())) as conn:
                names = [n.rsplit(":", 1)[1] for n in io_greenlets_of(conn)]
                assert names == ["reader", "writer"]
                body = pattern(9, MiB)
                assert conn.request(body, fid=FID_ECHO, timeout=20).body == body


def test_concurrent_callers_frames_are_coalesced_into_few_writes(io_mode: str) -> None:
    """Fifty callers ready in one turn of the loop: their frames share a write or two, not fifty."""
    bus = EventBus()
    sent: list[Any] = []
    bus.subscribe(sent.append, prefix="io.sent")
    with EmbeddedServer() as server, Connection(server.url, bus=bus, options=opts()) as conn:
        jobs = [gevent.spawn(conn.request, b"%d" % i, FID_ECHO, timeout=10) for i in range(50)]
        gevent.joinall(jobs, timeout=15, raise_error=True)
        assert [j.value.body for j in jobs] == [b"%d" % i for i in range(50)]
        frames = [e.attrs["frames"] for e in sent]
        assert sum(frames) == 50
        assert len(sent) <= 3, frames  # the first caller may go alone; the rest share a batch
        assert max(frames) >= 45, frames


def test_a_caller_alone_on_the_link_hands_its_frame_to_the_kernel_itself() -> None:
    """No flush callback and no writer greenlet for a lone request: the caller's own greenlet writes it."""
    bus = EventBus()
    writers: list[Any] = []
    bus.subscribe(lambda e: writers.append(gevent.getcurrent()), prefix="io.sent")
    with EmbeddedServer() as server, Connection(server.url, bus=bus, options=opts()) as conn:
        callers: list[Any] = []

        def call() -> bytes:
            callers.append(gevent.getcurrent())
            return conn.request(b"solo", fid=FID_ECHO, timeout=5).body

        job = gevent.spawn(call)
        assert job.get(timeout=5) == b"solo"
        assert writers == callers  # one write, from the caller (not the hub, not a writer greenlet)


def test_a_lone_request_whose_own_send_closes_the_link_fails_at_once_even_without_a_timeout() -> None:
    """An io.sent listener closes the connection inside the caller's own send: the caller gets ConnectionClosed.

    The lone caller sends before its deadline bookkeeping; its entry must be on
    the table before that send, or the close would miss it and a request with
    no timeout would wait forever.
    """
    bus = EventBus()
    with EmbeddedServer() as server:
        conn = Connection(server.url, bus=bus, options=opts())
        conn.connect()
        bus.subscribe(lambda e: conn.close(), prefix="io.sent")
        job = gevent.spawn(conn.request, b"x", FID_SILENT, timeout=None)
        assert gevent.joinall([job], timeout=5) == [job]
        assert isinstance(job.exception, ConnectionClosed) and conn.in_flight == 0


# ---------------------------------------------------------------------------------- partial sends
def test_partial_sends_to_a_slow_reader_keep_frames_intact_and_in_order(io_mode: str) -> None:
    sizes = [10, 20_000, 100, 90_000, 5, SEPARATE_BODY, 70_000, 1, 40_000, 3000] * 3
    small_sndbuf = ((stdsocket.SOL_SOCKET, stdsocket.SO_SNDBUF, 4096),)
    with (
        slow_reader(4 * MiB, rcvbuf=4096) as peer,
        Connection(peer.url, options=opts(socket_options=small_sndbuf)) as conn,
    ):
        qids = []
        for i, size in enumerate(sizes):
            qids.append(conn.send(pattern(i, size), fid=i))
        peer.wait_frames(len(sizes), timeout=20)
        frames = [f for f in peer.frames if f.fid != HEARTBEAT_FID]
        assert [f.qid for f in frames] == qids
        assert [f.fid for f in frames] == list(range(len(sizes)))
        for i, f in enumerate(frames):
            assert f.body == pattern(i, sizes[i]), f"frame {i} ({sizes[i]} bytes) damaged"
        assert wait_for(lambda: conn.buffered()[1] == 0)
        assert conn.frames_sent == len(sizes)
        assert conn.bytes_sent == sum(24 + s for s in sizes)


def test_partial_sends_of_concurrent_requests_with_a_small_send_buffer(io_mode: str) -> None:
    small_sndbuf = ((stdsocket.SOL_SOCKET, stdsocket.SO_SNDBUF, 4096),)
    with EmbeddedServer() as server, Connection(server.url, options=opts(socket_options=small_sndbuf)) as conn:
        sizes = [300_000, 20, 17_000, 150_000, 1, 64 * 1024] * 2
        out: list[Any] = [None] * len(sizes)

        def call(i: int) -> None:
            body = pattern(i + 50, sizes[i])
            out[i] = conn.request(body, fid=FID_ECHO, timeout=20).body == body

        gevent.joinall([gevent.spawn(call, i) for i in range(len(sizes))], timeout=30, raise_error=True)
        assert out == [True] * len(sizes)


def test_a_partial_frame_survives_a_read_that_finds_the_kernel_empty(io_mode: str) -> None:
    """Reads of exactly recv_buffer_size end with a partial answer held; the next read finds nothing.

    The peer sends answer A (6,000 bytes) and the first 2,192 bytes of answer
    B in one write of 8,192 bytes: two full 4 KiB reads, then a read that
    finds the kernel empty while 2,192 bytes of B wait in the decoder. The
    rest of B comes 100 ms later and must complete B, byte for byte.
    """
    body_a, body_b = pattern(1, 6000 - 24), pattern(2, 6000 - 24)

    def script(sock: Any) -> None:
        dec = FrameDecoder()
        got: list[Frame] = []
        while len(got) < 2:
            data = sock.recv(65536)
            if not data:
                return
            got += dec.feed(data)
        a, b = (encode_frame(Frame(qid=f.qid, fid=f.fid, res=1, body=f.body)) for f in got)
        sock.sendall(a + b[:2192])
        gevent.sleep(0.1)
        sock.sendall(b[2192:])
        while sock.recv(65536):
            pass

    with scripted_peer(script) as peer, Connection(peer.url, options=opts(recv_buffer_size=4096)) as conn:
        ja = gevent.spawn(conn.request, body_a, FID_ECHO, timeout=5)
        gevent.sleep(0.01)  # A is first on the wire
        jb = gevent.spawn(conn.request, body_b, FID_ECHO, timeout=5)
        gevent.joinall([ja, jb], timeout=10)
        assert ja.successful() and ja.value.body == body_a, ja.exception
        assert jb.successful(), repr(jb.exception)
        assert jb.value.body == body_b
        assert conn.state == "connected"


def test_a_bytearray_reused_after_send_does_not_change_the_queued_frame(io_mode: str) -> None:
    """send() returns at once; a caller that refills its bytearray for the next message must not rewrite the last.

    The peer reads slowly, so the frames are still queued when the buffer changes.
    """
    small_sndbuf = ((stdsocket.SOL_SOCKET, stdsocket.SO_SNDBUF, 4096),)
    with (
        slow_reader(2 * MiB, rcvbuf=4096) as peer,
        Connection(peer.url, options=opts(socket_options=small_sndbuf)) as conn,
    ):
        buf = bytearray(100_000)
        sent = []
        for i in range(5):
            buf[:] = pattern(i, len(buf))
            sent.append(bytes(buf))
            conn.send(buf, fid=1)
        buf[:] = b"\x00" * len(buf)
        peer.wait_frames(5, timeout=20)
        got = [f.body for f in peer.frames if f.fid == 1]
        assert [g == s for g, s in zip(got, sent, strict=True)] == [True] * 5


# ---------------------------------------------------------------------------------- the hub stays free
FLOOD_PEER = r"""
import socket, struct, sys, time
HDR = struct.Struct(">IHHBBIIIH")
push = b"".join(HDR.pack(20 + 16, 0x7A5A, 1, 0, 0, 0, 4, 200, 0) + b"p" * 16 for _ in range(4096))
ls = socket.socket(); ls.bind(("127.0.0.1", 0)); ls.listen(1)
print(ls.getsockname()[1], flush=True)
conn, _ = ls.accept()
end = time.monotonic() + float(sys.argv[1])
try:
    while time.monotonic() < end:
        conn.sendall(push)
except OSError:
    pass
conn.close()
"""


def test_a_push_flood_does_not_hold_the_hub(io_mode: str) -> None:
    """A peer in another process floods 40-byte pushes for 3 s; a 1 ms ticker here must keep ticking.

    A hub held while the flood lasts (the bug this guards against) gives the
    ticker no turn while megabytes arrive. The checks are about work, not
    time, so they hold on a busy machine and under coverage: the ticker's
    second overlaps the flood, and at most 1 MiB of pushes (about 26,000) is
    dispatched between two turns of the ticker. Measured here: median gaps of
    5-12 ms, 45-52 ms with the shared 2-core machine busy, and single gaps up
    to 540 ms when the OS did not schedule us at all; so the only time bound,
    outside a tracer, is generous: no gap of 1.5 s.
    """
    proc, port = spawn_peer(FLOOD_PEER, "3.0")
    try:
        pushes = [0]

        def on_push(frame: Frame) -> None:
            pushes[0] += 1

        with Connection(f"tcp://127.0.0.1:{port}", options=opts(), on_push=on_push) as conn:
            assert wait_for(lambda: pushes[0] > 0)
            gaps, between = [], []
            received = start = conn.bytes_received
            last = time.monotonic()
            end = last + 1.0
            while time.monotonic() < end:
                gevent.sleep(0.001)
                now = time.monotonic()
                gaps.append(now - last)
                last = now
                between.append(conn.bytes_received - received)
                received = conn.bytes_received
            total = conn.bytes_received - start
            assert conn.state == "connected"
        gaps.sort()
        figures = (
            f"1 ms ticker: {len(gaps)} ticks, median gap {gaps[len(gaps) // 2] * 1000:.1f} ms, "
            f"max {gaps[-1] * 1000:.1f} ms; {total / 1024:.0f} KiB received meanwhile, "
            f"at most {max(between) / 1024:.0f} KiB between two ticks"
        )
        assert total >= 256 * 1024, figures  # the flood was flowing while the ticker ran
        assert len(gaps) >= 3, figures
        assert max(between) <= MiB, figures
        if sys.gettrace() is None and "coverage" not in sys.modules:
            assert gaps[-1] < 1.5, figures
    finally:
        stop_peer(proc)


FLOOD_THEN_MEDIUM_PEER = r"""
import socket, struct, time
HDR = struct.Struct(">IHHBBIIIH")
def push(size):
    return HDR.pack(20 + size, 0x7A5A, 1, 0, 0, 0, 4, 200, 0) + b"m" * size
tiny = push(16) * 4096
medium = push(40_000) * 4  # 160 KiB of frames under BIG_FRAME: received through the scratch
ls = socket.socket(); ls.bind(("127.0.0.1", 0)); ls.listen(1)
print(ls.getsockname()[1], flush=True)
conn, _ = ls.accept()
try:
    end = time.monotonic() + 0.7
    while time.monotonic() < end:
        conn.sendall(tiny)
    time.sleep(0.3)
    for _ in range(30):
        conn.sendall(medium)
        time.sleep(0.02)
    conn.recv(1)  # until the client closes
except OSError:
    pass
conn.close()
"""


def test_reads_of_tiny_frames_shrink_and_grow_back_for_larger_ones() -> None:
    """Plain TCP reads bring about a thousand frames at most (hub fairness), and grow again for larger frames."""
    proc, port = spawn_peer(FLOOD_THEN_MEDIUM_PEER)
    bus = EventBus()
    reads: list[tuple[int, int]] = []
    bus.subscribe(lambda e: reads.append((e.attrs["nbytes"], e.attrs["frames"])), prefix="io.received")
    try:
        pushes: list[int] = []
        with Connection(
            f"tcp://127.0.0.1:{port}", bus=bus, options=opts(), on_push=lambda f: pushes.append(len(f.body))
        ):
            assert wait_for(lambda: pushes.count(40_000) == 120, timeout=20), (len(pushes), reads[-5:])
        tiny_reads = [r for r in reads if r[1] > 100]
        medium_reads = [r for r in reads if r[0] > 0 and r[1] <= 10]
        assert len(tiny_reads) > 20, reads[:10]
        # A full 256 KiB read would bring 6,553 of these 40-byte pushes; after the first few reads
        # the read size has come down to a thousand-odd frames.
        settled = tiny_reads[8:]
        assert max(f for _, f in settled) <= 2048, sorted(settled, reverse=True)[:5]
        # Reads of 40 KB frames bring a few frames each: the read size grows back past 64 KiB.
        assert max(n for n, _ in medium_reads) > 64 * 1024, sorted(medium_reads, reverse=True)[:5]
    finally:
        stop_peer(proc)


# ---------------------------------------------------------------------------------- closing from a woken caller
def test_a_caller_woken_from_the_read_path_closes_the_connection(io_mode: str) -> None:
    """Five answers arrive in one segment; the first caller woken closes; three requests were never answered."""
    answered, unanswered = 5, 3
    total = answered + unanswered

    def script(sock: Any) -> None:
        dec = FrameDecoder()
        got: list[Frame] = []
        while len(got) < total:
            data = sock.recv(65536)
            if not data:
                return
            got += [f for f in dec.feed(data) if f.fid != HEARTBEAT_FID]
        reply = b"".join(encode_frame(Frame(qid=f.qid, fid=f.fid, res=1, body=b"re:" + f.body)) for f in got[:answered])
        sock.sendall(reply)  # one write: one read on the client, one batch of answers
        while sock.recv(65536):
            pass

    with scripted_peer(script) as peer:
        conn = Connection(peer.url, options=opts()).connect(timeout=5)
        outcomes: dict[int, Any] = {}

        def call(i: int) -> None:
            try:
                r = conn.request(b"%d" % i, fid=1, timeout=10)
            except NexusError as exc:
                outcomes[i] = exc
                return
            outcomes[i] = r.body
            if not any(isinstance(o, bytes) for k, o in outcomes.items() if k != i):
                conn.close()  # the first caller woken closes the link under the rest of its batch

        jobs = [gevent.spawn(call, i) for i in range(total)]
        gevent.joinall(jobs, timeout=10)
        assert all(j.ready() for j in jobs), "a caller hung after the connection was closed"
        assert all(j.successful() for j in jobs)
        assert conn.state == "closed"
        got = [outcomes[i] for i in range(total)]
        bodies = [o for o in got if isinstance(o, bytes)]
        failures = [o for o in got if not isinstance(o, bytes)]
        # Every answer that arrived reached its caller intact; the rest failed cleanly.
        assert 1 <= len(bodies) <= answered
        assert all(b == b"re:%d" % i for i, b in enumerate(got) if isinstance(b, bytes))
        assert all(isinstance(f, ConnectionClosed) for f in failures), failures
        assert len(failures) >= unanswered
        assert conn.in_flight == 0
        with pytest.raises(ConnectionClosed):
            conn.request(b"after", fid=1, timeout=1)


# ---------------------------------------------------------------------------------- pushes
def test_an_on_push_that_raises_is_logged_and_the_link_survives(io_mode: str, caplog: pytest.LogCaptureFixture) -> None:
    seen: list[bytes] = []

    def on_push(frame: Frame) -> None:
        seen.append(frame.body)
        raise RuntimeError("push handler bug")

    caplog.set_level(logging.ERROR, logger="nexus_green.connection")
    with EmbeddedServer() as server, Connection(server.url, options=opts(), on_push=on_push) as conn:
        r = conn.request(b"3", fid=FID_PUSH, timeout=5)
        assert r.code == 200
        assert seen == [b"push 0", b"push 1", b"push 2"]
        assert conn.pushes == 3
        assert conn.state == "connected"
        assert conn.request(b"still", fid=FID_ECHO, timeout=5).body == b"still"
    records = [r for r in caplog.records if "push callback failed" in r.getMessage()]
    assert records, [r.getMessage() for r in caplog.records]
    assert records[0].exc_info is not None and "push handler bug" in str(records[0].exc_info[1])


def test_an_on_push_that_blocks_does_not_kill_the_link(io_mode: str, caplog: pytest.LogCaptureFixture) -> None:
    """In the hub a blocking call cannot switch: gevent refuses it, the callback error is logged."""
    calls: list[bytes] = []

    def on_push(frame: Frame) -> None:
        calls.append(frame.body)
        gevent.sleep(0.01)

    caplog.set_level(logging.ERROR, logger="nexus_green.connection")
    with EmbeddedServer() as server, Connection(server.url, options=opts(), on_push=on_push) as conn:
        r = conn.request(b"2", fid=FID_PUSH, timeout=5)
        assert r.code == 200 and calls == [b"push 0", b"push 1"]
        assert conn.request(b"after", fid=FID_ECHO, timeout=5).body == b"after"
        assert conn.state == "connected"
    if io_mode == "hub-callbacks":
        assert any("push callback failed" in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------------------------- a bug never leaves callers hanging
def test_an_internal_error_while_reading_fails_the_requests_and_is_logged(
    io_mode: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from nexus_green.connection.session import Session

    def broken(self: Session, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("dispatch bug")

    caplog.set_level(logging.ERROR, logger="nexus_green.connection")
    with EmbeddedServer() as server, Connection(server.url, options=opts()) as conn:
        monkeypatch.setattr(Session, "dispatch", broken)
        with pytest.raises(ConnectionLost, match=r"internal error in the reader: RuntimeError\('dispatch bug'\)"):
            conn.request(b"x", fid=FID_ECHO, timeout=5)
        assert conn.state == "closed"
    assert any("unexpected error in the reader" in r.getMessage() for r in caplog.records)


def test_an_internal_error_while_writing_fails_the_requests_and_is_logged(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from nexus_green.transport.stream import Stream

    def broken(self: Stream, buffers: Any) -> int:
        raise RuntimeError("sendmsg bug")

    caplog.set_level(logging.ERROR, logger="nexus_green.connection")
    with EmbeddedServer() as server, Connection(server.url, options=opts()) as conn:
        monkeypatch.setattr(Stream, "sendmsg_nowait", broken)
        jobs = [gevent.spawn(conn.request, b"%d" % i, FID_ECHO, timeout=5) for i in range(3)]
        gevent.joinall(jobs, timeout=10)
        assert all(j.ready() for j in jobs)
        for j in jobs:
            assert isinstance(j.exception, ConnectionLost), j.exception
            assert "internal error in the writer" in str(j.exception)
        assert conn.state == "closed"
    assert any("unexpected error in the writer" in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------------------------- heartbeats
def test_heartbeats_detect_a_silent_peer(io_mode: str) -> None:
    bus = EventBus()
    timeouts: list[Any] = []
    bus.subscribe(timeouts.append, prefix="heartbeat.timeout")
    with silent_peer() as peer:
        conn = Connection(peer.url, bus=bus, options=opts(heartbeat_interval=0.05, heartbeat_timeout=0.1)).connect(
            timeout=5
        )
        try:
            job = gevent.spawn(conn.request, b"x", FID_ECHO, timeout=10)
            assert wait_for(lambda: conn.state == "closed", timeout=5)
            job.join(timeout=5)
            assert isinstance(job.exception, HeartbeatTimeout), job.exception
            assert isinstance(conn.last_error, HeartbeatTimeout)
            assert len(timeouts) == 1
            assert any(f.fid == HEARTBEAT_FID for f in peer.frames)  # a ping went out and was never answered
        finally:
            conn.close()


def test_heartbeats_are_sent_on_an_idle_link_and_answered(io_mode: str) -> None:
    bus = EventBus()
    rtts: list[Any] = []
    bus.subscribe(rtts.append, prefix="heartbeat.rtt")
    with (
        EmbeddedServer() as server,
        Connection(server.url, bus=bus, options=opts(heartbeat_interval=0.03, heartbeat_timeout=2.0)) as conn,
    ):
        assert wait_for(lambda: server.heartbeats_received >= 3 and len(rtts) >= 3, timeout=5)
        assert conn.state == "connected"
        assert conn.request(b"ok", fid=FID_ECHO, timeout=5).body == b"ok"
        if io_mode == "hub-callbacks":
            assert io_greenlets_of(conn) == []  # heartbeats are timers, not a greenlet


def test_a_slow_upload_keeps_a_silent_peer_alive_by_progress_until_it_ends(io_mode: str) -> None:
    """The peer never answers pings but reads our 1.5 MiB at ~2 MiB/s: alive while it reads, dead after."""
    small_sndbuf = ((stdsocket.SOL_SOCKET, stdsocket.SO_SNDBUF, 4096),)
    with slow_reader(2 * MiB, rcvbuf=4096) as peer:
        conn = Connection(
            peer.url,
            options=opts(socket_options=small_sndbuf, heartbeat_interval=0.05, heartbeat_timeout=0.2),
        ).connect(timeout=5)
        try:
            body = pattern(4, 3 * MiB // 2)
            conn.send(body, fid=1)
            t0 = time.monotonic()
            assert wait_for(lambda: peer.frames_received >= 1 or conn.state != "connected", timeout=15)
            upload = time.monotonic() - t0
            assert conn.state == "connected", (conn.last_error, f"{upload:.2f}s into the upload")
            assert upload > 0.3  # several heartbeat timeouts long: only progress kept it alive
            assert [f.body == body for f in peer.frames if f.fid == 1] == [True]
            # The upload is over; pings go unanswered: the link dies within a few timeouts.
            assert wait_for(lambda: conn.state == "closed", timeout=5)
            assert isinstance(conn.last_error, HeartbeatTimeout)
        finally:
            conn.close()


# ---------------------------------------------------------------------------------- buffered()
def test_buffered_counts_queued_prefix_body_frames() -> None:
    small_sndbuf = ((stdsocket.SOL_SOCKET, stdsocket.SO_SNDBUF, 4096),)
    body = pattern(1, 100_000)
    with (
        accept_and_stall() as peer,
        Connection(peer.url, options=opts(socket_options=small_sndbuf, max_write_buffer=64 * MiB)) as conn,
    ):
        n = 60
        for i in range(n):
            conn.send(body, fid=i)
        total = n * (24 + len(body))
        # The peer never reads: the kernel fills, the rest stays queued.
        settled = [conn.bytes_sent, time.monotonic()]

        def stalled() -> bool:
            if conn.bytes_sent != settled[0]:
                settled[:] = [conn.bytes_sent, time.monotonic()]
            return time.monotonic() - settled[1] > 0.2

        assert wait_for(stalled, timeout=10)
        read, write = conn.buffered()
        assert read == 0
        assert 0 < write < total
        assert write == total - conn.bytes_sent  # every queued byte is counted once, split frames included
        assert conn.frames_sent < n
    assert conn.buffered() == (0, 0)


def test_buffered_counts_a_partial_big_frame_from_the_peer() -> None:
    frame = encode_frame(Frame(qid=0, fid=9, body=pattern(2, 200_000)))
    half = len(frame) // 2

    def script(sock: Any) -> None:
        sock.sendall(frame[:half])
        while sock.recv(65536):
            pass

    with scripted_peer(script) as peer, Connection(peer.url, options=opts()) as conn:
        assert wait_for(lambda: conn.buffered()[0] == half, timeout=5), conn.buffered()
        assert conn.buffered()[1] == 0


# ---------------------------------------------------------------------------------- memory per request
# Arguments: how many requests to read before answering them all in one write (default 1),
# and seconds to wait before that write (default 0).
ECHO_PEER = r"""
import socket, struct, sys, time
batch = int(sys.argv[1]) if len(sys.argv) > 1 else 1
delay = float(sys.argv[2]) if len(sys.argv) > 2 else 0.0
ls = socket.socket(); ls.bind(("127.0.0.1", 0)); ls.listen(1)
print(ls.getsockname()[1], flush=True)
conn, _ = ls.accept()
conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
def read(n):
    buf = bytearray()
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:
            sys.exit(0)
        buf += chunk
    return buf
while True:
    answers = []
    for _ in range(batch):
        head = read(24)
        (length,) = struct.unpack_from(">I", head)
        rest = read(length - 20)
        head[9] = 1  # Res: a response
        answers.append(bytes(head) + bytes(rest))
    if delay:
        time.sleep(delay)
    conn.sendall(answers[0] if batch == 1 else b"".join(answers))
"""


def test_allocations_per_1mib_request_stay_below_two_and_a_half_bodies() -> None:
    proc, port = spawn_peer(ECHO_PEER)
    try:
        with Connection(f"tcp://127.0.0.1:{port}", options=opts()) as conn:
            body = os.urandom(MiB)
            assert conn.request(body, fid=FID_ECHO, timeout=10).body == body  # warm up
            peaks = []
            tracemalloc.start()
            try:
                for _ in range(3):
                    gevent.sleep(0)
                    base, _ = tracemalloc.get_traced_memory()
                    tracemalloc.reset_peak()
                    r = conn.request(body, fid=FID_ECHO, timeout=10)
                    _, peak = tracemalloc.get_traced_memory()
                    assert r.body == body
                    del r
                    peaks.append(peak - base)
            finally:
                tracemalloc.stop()
        # The answer's body is one MiB that must exist; the request's body is never copied.
        assert max(peaks) < 2.5 * MiB, [f"{p / MiB:.2f} MiB" for p in peaks]
    finally:
        stop_peer(proc)


def test_a_big_answer_already_whole_in_the_kernel_becomes_the_body_without_a_copy() -> None:
    """Two 200 KiB answers land while the hub is busy: the second is taken whole by one recv (no copy here).

    The first comes with the bytes of the first read (its prefix and part of its
    body), so it is received into a buffer and copied into its body; after a big
    frame the reader takes the next prefix alone, finds the whole payload in the
    kernel (FIONREAD) and receives it as the body itself.
    """
    proc, port = spawn_peer(ECHO_PEER, "2", "0.2")  # both answers in one write, 0.2 s after both requests
    try:
        with Connection(f"tcp://127.0.0.1:{port}", options=opts()) as conn:
            bodies = [os.urandom(200 * 1024), os.urandom(200 * 1024)]
            glets = [gevent.spawn(conn.request, body, FID_ECHO, timeout=10) for body in bodies]
            assert wait_for(lambda: conn.in_flight == 2 and conn.buffered()[1] == 0)  # both handed to the kernel
            time.sleep(0.6)  # the hub is held; the peer answers both at once after 0.2 s
            assert gevent.joinall(glets, timeout=10)
            assert [g.value.body for g in glets] == bodies
            decoder = conn._decoder
            assert decoder is not None and decoder.payloads_taken >= 1
            # And the usual way still works for what follows.
            pair = [gevent.spawn(conn.request, b"x" * n, FID_ECHO, timeout=10) for n in (100, 100_000)]
            assert gevent.joinall(pair, timeout=10) and [len(g.value.body) for g in pair] == [100, 100_000]
    finally:
        stop_peer(proc)


@pytest.mark.parametrize("kernel_gives", ["half", "nothing", "eof"])
def test_a_whole_payload_read_that_comes_back_short_loses_nothing(
    kernel_gives: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FIONREAD counted the payload but the read brings less: half goes the buffered way, none waits, EOF is a loss."""
    from nexus_green.transport.stream import Stream

    real = Stream.recv_bytes_nowait
    calls: list[int] = []

    def short(self: Stream, n: int) -> Any:
        calls.append(n)
        if len(calls) > 1:
            return real(self, n)
        if kernel_gives == "half":
            return real(self, n // 2)
        return None if kernel_gives == "nothing" else b""

    monkeypatch.setattr(Stream, "recv_bytes_nowait", short)
    proc, port = spawn_peer(ECHO_PEER, "2", "0.2")
    try:
        with Connection(f"tcp://127.0.0.1:{port}", options=opts()) as conn:
            bodies = [os.urandom(200 * 1024), os.urandom(200 * 1024)]
            glets = [gevent.spawn(conn.request, body, FID_ECHO, timeout=10) for body in bodies]
            assert wait_for(lambda: conn.in_flight == 2 and conn.buffered()[1] == 0)
            time.sleep(0.6)  # both answers arrive before the reader runs (as in the test above)
            assert gevent.joinall(glets, timeout=10) == glets and calls
            if kernel_gives == "eof":
                assert all(isinstance(g.exception, ConnectionLost) for g in glets[1:])
                assert "closed the connection" in str(glets[1].exception)
            else:
                assert [g.value.body for g in glets] == bodies
    finally:
        stop_peer(proc)


ECHO_PEER_THREADS = r"""
import socket, struct, sys, threading
ls = socket.socket(); ls.bind(("127.0.0.1", 0)); ls.listen(64)
print(ls.getsockname()[1], flush=True)
def serve(conn):
    def read(n):
        buf = bytearray()
        while len(buf) < n:
            chunk = conn.recv(n - len(buf))
            if not chunk:
                raise EOFError
            buf += chunk
        return buf
    try:
        while True:
            head = read(24)
            (length,) = struct.unpack_from(">I", head)
            rest = read(length - 20)
            head[9] = 1
            conn.sendall(bytes(head) + bytes(rest))
    except (EOFError, OSError):
        conn.close()
while True:
    c, _ = ls.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"""


def test_idle_links_keep_neither_their_last_request_nor_their_last_answer(io_mode: str) -> None:
    """Six links each carry one 1 MiB request and its 1 MiB answer, then sit idle.

    Memory is bounded by work in flight: once the answers are delivered and
    dropped, what stays allocated must not grow with the number of links
    (the decoder may keep a couple of big-frame buffers for reuse: that is
    the 3.5 MiB allowed).
    """
    proc, port = spawn_peer(ECHO_PEER_THREADS)
    conns: list[Connection] = []
    try:
        conns = [Connection(f"tcp://127.0.0.1:{port}", options=opts()).connect(timeout=5) for _ in range(6)]
        body = os.urandom(MiB)
        gc.collect()
        tracemalloc.start()
        try:
            base = tracemalloc.get_traced_memory()[0]
            for c in conns:
                r = c.request(body, fid=FID_ECHO, timeout=10)
                assert r.body == body
                del r
            gevent.sleep(0.05)
            gc.collect()
            kept = tracemalloc.get_traced_memory()[0] - base
            top = tracemalloc.take_snapshot().statistics("lineno")[:3]
        finally:
            tracemalloc.stop()
        where = "; ".join(
            f"{s.traceback[0].filename.rsplit('/', 2)[-1]}:{s.traceback[0].lineno} {s.size / MiB:.1f} MiB" for s in top
        )
        assert kept < 3.5 * MiB, f"{kept / MiB:.2f} MiB kept after six 1 MiB round trips on six idle links ({where})"
    finally:
        for c in conns:
            c.close()
        stop_peer(proc)


def test_big_frame_buffers_kept_for_reuse_are_bounded_per_thread_not_per_greenlet() -> None:
    """Six greenlets (reader greenlets of TLS links, say) each decode one 1 MiB frame and stay alive.

    The decoder keeps at most two big-frame buffers "per thread" for reuse.
    After ``patch_all()`` a ``threading.local`` is per greenlet: then every
    reader greenlet would keep buffers of its own for as long as it lives.
    """
    wire = encode_frame(Frame(qid=1, fid=1, res=1, body=os.urandom(MiB)))
    done = gevent.event.Event()
    decoded: list[int] = []

    def reader() -> None:
        dec = FrameDecoder()
        for i in range(0, len(wire), 256 * 1024):
            decoded.extend(len(f[6]) for f in dec.feed_raw(wire[i : i + 256 * 1024]))  # keeps no body
        done.wait(10)

    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        readers = [gevent.spawn(reader) for _ in range(6)]
        assert wait_for(lambda: len(decoded) == 6)
        gc.collect()
        kept = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
        done.set()
        gevent.joinall(readers, timeout=5)
    assert decoded == [MiB] * 6
    assert kept < 3.5 * MiB, f"{kept / MiB:.2f} MiB kept by six live greenlets that each decoded one 1 MiB frame"


def test_links_in_two_threads_each_read_into_their_own_scratch() -> None:
    """Each OS thread has its own hub and its own receive scratch: two threads' answers never mix."""
    import threading

    proc, port = spawn_peer(ECHO_PEER_THREADS)
    main_hub = gevent.get_hub()
    results: dict[int, Any] = {}

    def work(t: int) -> None:
        hub = gevent.get_hub()
        try:
            with Connection(f"tcp://127.0.0.1:{port}", options=opts()) as conn:
                ok = []
                for i in range(30):
                    body = pattern(t * 100 + i, 150_000 if i % 3 == 0 else 3000 + i)
                    ok.append(conn.request(body, fid=FID_ECHO, timeout=10).body == body)
                results[t] = ok
        except BaseException as exc:  # reported by the assertion below
            results[t] = exc
        finally:
            if hub is not main_hub:  # a real thread (unpatched): its loop's descriptors go with it
                hub.destroy(destroy_loop=True)

    try:
        threads = [threading.Thread(target=work, args=(t,)) for t in range(2)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(20)
        assert results == {0: [True] * 30, 1: [True] * 30}
    finally:
        stop_peer(proc)


# ---------------------------------------------------------------------------------- plain and patched
def test_module_passes_under_patch_all() -> None:
    run = run_module_patched(__file__)
    assert run.returncode == 0, run.report()


def test_a_memoryview_of_wide_items_is_sent_as_its_bytes(io_mode: str) -> None:
    """Found by review: len() of a memoryview over array('i') counts items, so the length field was wrong."""
    import array

    body = array.array("i", range(1000))  # 4,000 bytes, 1,000 items
    with EmbeddedServer() as server, Connection(server.url, options=opts()) as conn:
        assert conn.request(memoryview(body), fid=1, timeout=5).body == body.tobytes()
        assert conn.request(b"after", fid=1, timeout=5).body == b"after"  # the framing held
