"""The hostile peers kit: each peer does what it claims, and nothing it starts outlives it.

The module also proves the patched-run harness by using it: the last test
reruns this whole module after ``gevent.monkey.patch_all()``.
"""

from __future__ import annotations

import errno
import struct
import time
from pathlib import Path
from typing import Any

import gevent
import gevent.ssl
import pytest
from gevent import socket as gsocket

from nexus_green.protocol.frames import Frame, FrameDecoder, encode_frame, heartbeat_frame
from nexus_green.testing import (
    CLOSE,
    FID_ECHO,
    RESET,
    SELF_TEST,
    AcceptAndStall,
    Blackhole,
    EchoPeer,
    EmbeddedServer,
    HostilePeer,
    ListeningPeer,
    Pause,
    RestartableServer,
    ScriptedPeer,
    accept_and_close,
    accept_and_stall,
    blackhole,
    echo_peer,
    frame_peer,
    refusing_port,
    response_to,
    run_module_patched,
    running_patched,
    scripted_peer,
    silent_peer,
    slow_reader,
)
from nexus_green.testing import hostile as hostile_module

pytestmark = pytest.mark.usefixtures("leakcheck")

GARBAGE = b"\x00\x00\x00\x20" + b"G" * 40  # a length prefix, then a bad tag


def connect(peer: Any, timeout: float = 5.0) -> Any:
    return gsocket.create_connection(peer.address, timeout=timeout)


def read_frames(sock: Any, n: int, timeout: float = 5.0) -> list[Frame]:
    dec, got = FrameDecoder(), []
    with gevent.Timeout(timeout):
        while len(got) < n:
            data = sock.recv(65536)
            assert data, f"EOF after {len(got)} of {n} frames"
            got += dec.feed(data)
    return got


def read_until_eof(sock: Any, timeout: float = 5.0) -> bytes:
    out = b""
    with gevent.Timeout(timeout):
        while data := sock.recv(65536):
            out += data
    return out


def assert_silent(sock: Any, wait: float = 0.1) -> None:
    sock.settimeout(wait)
    with pytest.raises(TimeoutError):
        sock.recv(1)


# --------------------------------------------------------------------- the common surface
@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_every_peer_stands_for_its_address(host: str) -> None:
    with refusing_port(host=host) as a, echo_peer(host=host) as b:
        for peer in (a, b):
            h, p = peer
            assert (h, p) == peer.address == (peer[0], peer[1]) and len(peer) == 2
            assert h == host and 0 < p < 65536
            assert peer.url == (f"tcp://[{host}]:{p}" if ":" in host else f"tcp://{host}:{p}")
        with gsocket.create_connection(b, timeout=5) as c:  # a peer is accepted where an address is
            c.sendall(b"x")
            assert c.recv(1) == b"x"


def test_lifecycle_is_idempotent_and_the_repr_tells_the_state() -> None:
    peer = echo_peer()
    assert repr(peer) == "<EchoPeer tcp://127.0.0.1:0 new accepted=0 connections=0 closed=0 errors=0 bytes_received=0>"
    assert peer.start() is peer and peer.start() is peer
    assert f":{peer.port} open " in repr(peer)
    peer.close()
    peer.close()
    assert " closed " in repr(peer)
    unused = silent_peer()
    unused.close()  # never started: nothing to release
    assert "closed" in repr(unused) and unused.port == 0


def test_wait_for_is_bounded_and_names_the_peer() -> None:
    with echo_peer() as peer:
        peer.wait_for(lambda p: p.accepted == 0, timeout=0)  # already true: returns at once
        started = time.monotonic()
        with pytest.raises(TimeoutError, match=r"within 0.1 s: <EchoPeer tcp://127\.0\.0\.1:\d+ open accepted=0 "):
            peer.wait_for(lambda p: p.accepted == 1, timeout=0.1)
        assert time.monotonic() - started < 2
        with connect(peer):
            peer.wait_accepted(1)


def test_the_base_classes_leave_the_work_to_subclasses() -> None:
    with pytest.raises(NotImplementedError):
        HostilePeer().start()
    with ListeningPeer() as peer, connect(peer) as c:
        assert read_until_eof(c) == b""  # serve() is not implemented: the connection is closed
        peer.wait_for(lambda p: p.closed == 1)
        assert isinstance(peer.errors[0], NotImplementedError)


def test_an_accept_loop_stops_when_its_listener_goes_away() -> None:
    with echo_peer() as peer:
        acceptor = peer._acceptor
        assert acceptor is not None
        peer._listener.close()  # the OS-level failure an accept loop can meet
        acceptor.join(timeout=5)
        assert acceptor.dead


# --------------------------------------------------------------------- refusing_port
@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_refusing_port_refuses_and_keeps_the_port(host: str) -> None:
    with refusing_port(host=host) as peer:
        with pytest.raises(ConnectionRefusedError):
            connect(peer)
        # The port stays taken while the peer lives: nobody else can listen there.
        other = gsocket.socket(gsocket.AF_INET6 if ":" in host else gsocket.AF_INET)
        with pytest.raises(OSError) as e:
            other.bind(peer.address)
        other.close()
        assert e.value.errno == errno.EADDRINUSE
        assert repr(peer) == f"<RefusingPort {peer.url} open>"


def test_refusing_port_on_a_given_port_reuses_it() -> None:
    with refusing_port() as first:
        port = first.port
    with refusing_port(port=port) as again:
        assert again.port == port
        with pytest.raises(ConnectionRefusedError):
            connect(again)


def test_a_peer_that_cannot_bind_raises_and_holds_nothing() -> None:
    with echo_peer() as taken:
        for peer in (refusing_port(port=taken.port), echo_peer(port=taken.port)):
            with pytest.raises(OSError) as e:
                peer.start()
            assert e.value.errno == errno.EADDRINUSE and f"{peer.url} new" in repr(peer)


# --------------------------------------------------------------------- blackhole
def test_blackhole_connect_hangs_for_more_than_a_second() -> None:
    with blackhole() as hole:
        # Linux queues backlog + 1 connections (listen(0) holds one).
        assert hole.filled == hole.backlog + 1 == 1 and hole.accepted == 0
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            connect(hole, timeout=1.5)
        assert time.monotonic() - started >= 1.4  # it really waited: no RST, no accept
        assert repr(hole) == f"<Blackhole {hole.url} open accepted=0 backlog=0 filled=1>"


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_blackhole_with_a_larger_backlog(host: str) -> None:
    with blackhole(host=host, backlog=2) as hole:
        assert hole.filled == 3
        with pytest.raises(TimeoutError):
            connect(hole, timeout=0.3)


def test_blackhole_closing_refuses_a_pending_connect() -> None:
    hole = blackhole().start()
    pending = gevent.spawn(connect, hole, 10)
    gevent.sleep(0.1)  # the first SYN is dropped
    hole.close()
    pending.join(timeout=5)  # the SYN retransmitted after 1 s meets a closed port
    assert isinstance(pending.exception, ConnectionRefusedError)


def test_blackhole_without_tcp_info_fills_until_a_connect_times_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hostile_module, "_accept_queue", lambda listener: None)
    with blackhole(fill_timeout=0.1) as hole:
        assert hole.filled == 1
        with pytest.raises(TimeoutError):
            connect(hole, timeout=0.3)


def test_blackhole_that_cannot_fill_its_queue_fails_and_releases_everything(monkeypatch: pytest.MonkeyPatch) -> None:
    # A kernel that always says "room left": every timed-out connect is taken for a slow one.
    monkeypatch.setattr(hostile_module, "_accept_queue", lambda listener: (0, 0))
    hole = blackhole(fill_timeout=0.05, max_fill=3)
    with pytest.raises(RuntimeError, match="3 connections did not fill a backlog of 0"):
        hole.start()
    assert hole.filled == 0


def test_blackhole_whose_connects_fail_raises() -> None:
    with refusing_port() as refusing:

        class Misaimed(Blackhole):
            @property
            def address(self) -> tuple[str, int]:
                return refusing.address

        with pytest.raises(ConnectionRefusedError):
            Misaimed().start()


# --------------------------------------------------------------------- accept_and_close
def test_accept_and_close_gives_eof() -> None:
    with accept_and_close() as peer, connect(peer) as c:
        assert read_until_eof(c) == b""
        peer.wait_for(lambda p: p.closed == 1)
        assert peer.accepted == 1 and peer.connections == 0 and peer.bytes_received == 0


def test_accept_and_close_after_reading_n_bytes() -> None:
    with accept_and_close(read_bytes=6) as peer:
        with connect(peer) as c:
            c.sendall(b"abc")
            assert_silent(c)  # still open: 3 of 6 bytes read
            c.settimeout(5)
            c.sendall(b"def")
            assert read_until_eof(c) == b""
        with connect(peer) as c:  # bytes left unread: Linux closes with RST, as documented
            c.sendall(b"123456789")
            with pytest.raises(ConnectionResetError):
                read_until_eof(c)
        peer.wait_for(lambda p: p.closed == 2)
        assert peer.bytes_received == 12
        assert "bytes_received=12" in repr(peer)


def test_accept_and_close_stops_reading_at_eof_or_timeout() -> None:
    with accept_and_close(read_bytes=100, read_timeout=0.1) as peer:
        with connect(peer) as c:
            c.sendall(b"ab")
            c.shutdown(gsocket.SHUT_WR)
            assert read_until_eof(c) == b""
        with connect(peer) as c:  # sends nothing: the peer gives up after read_timeout
            assert read_until_eof(c) == b""
        peer.wait_for(lambda p: p.closed == 2)
        assert peer.bytes_received == 2
        assert [type(e) for e in peer.errors] == [TimeoutError]


def test_accept_and_close_with_reset() -> None:
    with accept_and_close(reset=True) as peer, connect(peer) as c:
        peer.wait_for(lambda p: p.closed == 1)
        with pytest.raises(ConnectionResetError):
            read_until_eof(c)


# --------------------------------------------------------------------- accept_and_stall
def test_accept_and_stall_never_answers_and_a_tls_handshake_stalls() -> None:
    with accept_and_stall() as peer:
        with connect(peer) as c:
            c.sendall(b"hello?")
            assert_silent(c)
        raw = connect(peer)
        ctx = gevent.ssl.SSLContext(gevent.ssl.PROTOCOL_TLS_CLIENT)
        tls = ctx.wrap_socket(raw, server_hostname="localhost", do_handshake_on_connect=False)
        tls.settimeout(0.2)
        with pytest.raises(TimeoutError, match="handshake"):
            tls.do_handshake()
        tls.close()
        peer.wait_accepted(2)
        # The peer still holds the connections the clients gave up on.
        assert peer.connections == 2 and peer.closed == 0
        c = connect(peer)
        peer.wait_accepted(3)
    assert read_until_eof(c) == b""  # closing the peer closes what it held
    c.close()
    assert peer.connections == 0


# --------------------------------------------------------------------- silent_peer
def test_silent_peer_records_frames_and_never_answers() -> None:
    with silent_peer() as peer, connect(peer) as c:
        data = encode_frame(Frame(qid=1, fid=2, body=b"one")) + heartbeat_frame() + encode_frame(Frame(qid=3, fid=2))
        c.sendall(data[:5])
        gevent.sleep(0.01)
        c.sendall(data[5:])
        peer.wait_frames(3)
        assert [(f.qid, f.is_heartbeat, f.body) for f in peer.frames] == [
            (1, False, b"one"),
            (0, True, b""),
            (3, False, b""),
        ]
        assert peer.bytes_received == len(data) and peer.protocol_errors == 0
        assert_silent(c)
        assert f"frames_received=3 bytes_received={len(data)} protocol_errors=0" in repr(peer)


def test_silent_peer_keeps_reading_after_garbage_but_stops_parsing() -> None:
    with silent_peer(record=2) as peer, connect(peer) as c:
        c.sendall(encode_frame(Frame(qid=1, fid=1)) + GARBAGE)
        peer.wait_for(lambda p: p.protocol_errors == 1)
        assert peer.frames_received == 1  # the frame before the garbage
        c.sendall(encode_frame(Frame(qid=2, fid=1)))
        peer.wait_for(lambda p: p.bytes_received == 24 + len(GARBAGE) + 24)
        assert peer.frames_received == 1 and peer.connections == 1
        assert_silent(c)


def test_silent_peer_keeps_only_the_last_frames() -> None:
    with silent_peer(record=2) as peer, connect(peer) as c:
        c.sendall(b"".join(encode_frame(Frame(qid=q, fid=1)) for q in range(5)))
        peer.wait_frames(5)
        assert [f.qid for f in peer.frames] == [3, 4]


def test_silent_peer_frames_from_many_connections() -> None:
    with silent_peer() as peer:
        clients = [connect(peer) for _ in range(3)]
        for i, c in enumerate(clients):
            c.sendall(encode_frame(Frame(qid=i, fid=1)))
        peer.wait_frames(3)
        assert sorted(f.qid for f in peer.frames) == [0, 1, 2] and peer.connections == 3
        for c in clients:
            c.close()
        peer.wait_for(lambda p: p.connections == 0)


# --------------------------------------------------------------------- slow_reader
def test_slow_reader_makes_a_writer_back_up() -> None:
    with slow_reader(20_000) as peer:
        c = gsocket.socket()
        c.setsockopt(gsocket.SOL_SOCKET, gsocket.SO_SNDBUF, 16384)  # a fixed send buffer: no autotuning
        c.settimeout(5)
        c.connect(peer.address)
        with pytest.raises(gevent.Timeout):
            with gevent.Timeout(0.3):
                c.sendall(b"x" * 2_000_000)
        sent_so_far = peer.bytes_received
        assert 0 < sent_so_far < 2_000_000
        peer.wait_for(lambda p: p.bytes_received > sent_so_far, timeout=2)  # it keeps reading, slowly
        c.close()
        assert peer.rate == 20_000.0


def test_slow_reader_parses_frames() -> None:
    with slow_reader(100_000) as peer, connect(peer) as c:
        c.sendall(encode_frame(Frame(qid=4, fid=1, body=b"b" * 300)) + encode_frame(Frame(qid=5, fid=1)))
        peer.wait_frames(2)
        assert [f.qid for f in peer.frames] == [4, 5]
        assert_silent(c)


@pytest.mark.parametrize("rate", [0, -1.0])
def test_slow_reader_needs_a_positive_rate(rate: float) -> None:
    with pytest.raises(ValueError, match="must be positive"):
        slow_reader(rate)


# --------------------------------------------------------------------- frame_peer
def test_frame_peer_answers_with_what_the_handler_returns() -> None:
    def handler(frame: Frame) -> Any:
        if frame.is_heartbeat:
            return None  # heartbeats unanswered
        if frame.fid == 1:
            return [response_to(frame, frame.body)]
        if frame.fid == 2:  # an answer for another qid, then garbage
            return [response_to(Frame(qid=999, fid=2), b"stray"), b"GARBAGE!"]
        return []

    with frame_peer(handler) as peer, connect(peer) as c:
        c.sendall(heartbeat_frame() + encode_frame(Frame(qid=1, fid=1, body=b"hi")) + encode_frame(Frame(qid=2, fid=9)))
        [answer] = read_frames(c, 1)
        assert (answer.qid, answer.code, answer.res, answer.body) == (1, 200, 1, b"hi")
        c.sendall(encode_frame(Frame(qid=3, fid=2)))
        dec = FrameDecoder()
        with gevent.Timeout(5):
            data = b""
            while len(data) < 29 + 8:
                data += c.recv(4096)
        [stray] = dec.feed(data[:29])
        assert stray.qid == 999 and data[29:] == b"GARBAGE!"
        peer.wait_frames(4)
        assert peer.frames_sent == 2 and peer.bytes_sent == 26 + 29 + 8
        assert "frames_sent=2 bytes_sent=63" in repr(peer)


def test_frame_peer_pauses_mid_frame() -> None:
    def handler(frame: Frame) -> Any:
        data = encode_frame(response_to(frame, b"slow"))
        return [data[:10], Pause(0.2), data[10:]]

    assert (repr(CLOSE), repr(RESET), Pause(0.2).seconds) == ("CLOSE", "RESET", 0.2)

    with frame_peer(handler) as peer, connect(peer) as c:
        c.sendall(encode_frame(Frame(qid=8, fid=1)))
        with gevent.Timeout(5):
            first = c.recv(100)
        assert len(first) == 10
        assert_silent(c, 0.05)  # the rest waits for the pause
        c.settimeout(5)
        [f] = FrameDecoder().feed(first + c.recv(100))
        assert f.body == b"slow"


@pytest.mark.parametrize(("action", "error"), [(CLOSE, None), (RESET, ConnectionResetError)])
def test_frame_peer_closes_or_resets(action: Any, error: Any) -> None:
    with frame_peer(lambda f: [response_to(f, b"bye"), action]) as peer, connect(peer) as c:
        c.sendall(encode_frame(Frame(qid=1, fid=1)) + encode_frame(Frame(qid=2, fid=1)))
        peer.wait_for(lambda p: p.closed == 1)
        if error is None:
            data = read_until_eof(c)
            assert [f.qid for f in FrameDecoder().feed(data)] == [1]  # the second frame got no answer
        else:
            with pytest.raises(error):
                read_until_eof(c)
        assert peer.frames_sent == 1


def test_frame_peer_greets_every_connection() -> None:
    greeting = [Frame(qid=0, fid=0, body=b"welcome")]
    with frame_peer(lambda f: None, greeting=greeting) as peer:
        for _ in range(2):
            with connect(peer) as c:
                [f] = read_frames(c, 1)
                assert f.body == b"welcome"
        c = connect(peer)
        c.sendall(encode_frame(Frame(qid=1, fid=1)))
        read_frames(c, 1)
        peer.wait_frames(1)
        assert_silent(c)  # None: no answer
        c.close()
    with frame_peer(lambda f: None, greeting=[b"garbage first", CLOSE]) as peer, connect(peer) as c:
        assert read_until_eof(c) == b"garbage first"


def test_frame_peer_closes_on_client_garbage() -> None:
    with frame_peer(lambda f: [response_to(f)]) as peer, connect(peer) as c:
        c.sendall(encode_frame(Frame(qid=1, fid=1)) + GARBAGE)
        data = read_until_eof(c)
        assert [f.qid for f in FrameDecoder().feed(data)] == [1]  # the frame before the garbage got its answer
        peer.wait_for(lambda p: p.closed == 1)
        assert peer.protocol_errors == 1


def test_frame_peer_handler_failures_close_the_connection(caplog: pytest.LogCaptureFixture) -> None:
    def handler(frame: Frame) -> Any:
        if frame.fid == 1:
            raise ValueError("handler bug")
        return [12345]

    with frame_peer(handler) as peer:
        for fid in (1, 2):
            with connect(peer) as c:
                c.sendall(encode_frame(Frame(qid=1, fid=fid)))
                assert read_until_eof(c) == b""
        peer.wait_for(lambda p: p.closed == 2)
        assert [type(e) for e in peer.errors] == [ValueError, TypeError]
        assert "expected Frame, bytes, Pause, CLOSE or RESET" in str(peer.errors[1])
    assert "serve() failed" in caplog.text


# --------------------------------------------------------------------- scripted_peer
def test_scripted_peer_is_one_implementation_under_both_names() -> None:
    from nexus_green.testing import scripted as scripted_module

    assert scripted_module.scripted_peer is scripted_peer is ScriptedPeer


def test_scripted_peer_runs_the_script_per_connection_and_keeps_its_errors() -> None:
    def script(sock: Any) -> None:
        what = sock.recv(10)
        if what == b"fail":
            raise AssertionError("script saw fail")
        if what == b"reset":
            sock.setsockopt(gsocket.SOL_SOCKET, gsocket.SO_LINGER, struct.pack("ii", 1, 0))
            return
        sock.sendall(what.upper())

    with scripted_peer(script) as peer:
        with connect(peer) as c:
            c.sendall(b"hello")
            assert c.recv(10) == b"HELLO"
        with connect(peer) as c:
            c.sendall(b"fail")
            assert read_until_eof(c) == b""
        with connect(peer) as c:
            c.sendall(b"reset")
            with pytest.raises(ConnectionResetError):
                read_until_eof(c)
        peer.wait_for(lambda p: p.closed == 3)
        assert [str(e) for e in peer.errors] == ["script saw fail"]
        assert "accepted=3 connections=0 closed=3 errors=1" in repr(peer)


def test_scripted_peer_kills_a_stalled_script_on_exit() -> None:
    reached = []

    def script(sock: Any) -> None:
        try:
            gevent.sleep(60)
        finally:
            reached.append("finally")

    with scripted_peer(script) as peer:
        c = connect(peer)
        peer.wait_accepted(1)
        gevent.sleep(0)  # the script starts
    assert reached == ["finally"] and peer.connections == 0
    assert read_until_eof(c) == b""
    c.close()


def test_a_script_may_close_its_own_peer() -> None:
    holder: list[ScriptedPeer] = []

    def script(sock: Any) -> None:
        holder[0].close()
        sock.sendall(b"x")  # its own socket was closed with the rest

    peer = scripted_peer(script).start()
    holder.append(peer)
    with connect(peer) as c:
        assert read_until_eof(c) == b""
    peer.wait_for(lambda p: p.closed == 1)
    assert "closed" in repr(peer) and isinstance(peer.errors[0], OSError)


# --------------------------------------------------------------------- echo_peer
def test_echo_peer_echoes() -> None:
    with echo_peer() as peer, connect(peer) as c:
        c.sendall(b"ping" * 1000)
        got = b""
        with gevent.Timeout(5):
            while len(got) < 4000:
                got += c.recv(65536)
        assert got == b"ping" * 1000 and peer.bytes_received == 4000
        c.close()
        peer.wait_for(lambda p: p.closed == 1)  # the client's EOF ends the echo
        assert not peer.errors


# --------------------------------------------------------------------- RestartableServer
def echo_request(sock: Any, qid: int, body: bytes) -> Frame:
    sock.sendall(encode_frame(Frame(qid=qid, fid=FID_ECHO, body=body)))
    [f] = read_frames(sock, 1)
    return f


def test_restartable_embedded_server_outage() -> None:
    with RestartableServer() as server:
        assert isinstance(server.server, EmbeddedServer) and server.running
        port, url = server.port, server.url
        assert url == f"tcp://127.0.0.1:{port}"
        clients = [connect(server) for _ in range(2)]
        assert echo_request(clients[0], 1, b"before").body == b"before"
        server.wait_for(lambda s: s.connections == 2)

        assert server.kill() == 2 and not server.running
        for c in clients:  # the link dies
            assert read_until_eof(c) == b""
            c.close()
        with pytest.raises(ConnectionRefusedError):  # down: refused, like a dead server
            connect(server)
        assert server.kill() == 0  # already down

        server.restart()
        assert server.running and server.port == port and server.url == url
        with connect(server) as c:
            assert echo_request(c, 2, b"after").body == b"after"
        server.restart()  # already up: nothing happens
        assert (server.kills, server.restarts, server.accepted, server.connections_killed) == (1, 1, 3, 2)
        assert repr(server).startswith(f"<RestartableServer {url} open accepted=3 ")
    assert not server.running
    assert server.kill() == 0  # closed: nothing to kill
    server.restart()
    assert not server.running


def test_restartable_wraps_a_given_embedded_server_with_tls_url() -> None:
    embedded = EmbeddedServer(welcome=b"hi")
    with RestartableServer(embedded) as server:
        assert server.server is embedded
        with connect(server) as c:
            [welcome] = read_frames(c, 1)
            assert welcome.body == b"hi"
        server.kill()
        server.restart()
        with connect(server) as c:
            [welcome] = read_frames(c, 1)
        assert embedded.connections_accepted == server.accepted == 2


def test_restartable_peer_factory() -> None:
    with RestartableServer(EchoPeer) as server:
        first = server.server
        assert isinstance(first, EchoPeer) and server.url == first.url
        with connect(server) as c:
            c.sendall(b"1")
            assert c.recv(1) == b"1"
        server.kill()
        assert server.server is None and server.connections == 0 and server.accepted == 1
        with pytest.raises(ConnectionRefusedError):
            connect(server)
        server.restart()
        assert server.server is not first and server.port == first.port
        with connect(server) as c:
            c.sendall(b"2")
            assert c.recv(1) == b"2"
            server.wait_for(lambda s: s.connections == 1)
        assert server.accepted == 2
    assert server.accepted == 2 and server.server is None


def test_restartable_closes_while_down_and_refuses_bad_targets() -> None:
    server = RestartableServer(AcceptAndStall).start()
    server.kill()
    server.close()  # releases the port it held while down
    with pytest.raises(TypeError, match="EmbeddedServer or a peer factory"):
        RestartableServer(42)  # type: ignore[arg-type]


# --------------------------------------------------------------------- the patched-run harness
def test_running_patched_tells_how_this_interpreter_runs() -> None:
    from gevent import monkey

    assert running_patched() is bool(monkey.is_module_patched("socket"))


@pytest.mark.skipif(running_patched(), reason="the plain run proves the harness; the patched one would nest")
def test_patched_run_reports_failures_and_deselects_itself(tmp_path: Path) -> None:
    module = tmp_path / "test_probe.py"
    module.write_text(
        "import socket\n"
        "def test_patched():\n"
        "    assert socket.socket.__module__.startswith('gevent')\n"
        "def test_fails():\n"
        "    assert 1 == 2, 'the failure shows'\n"
        f"def {SELF_TEST}():\n"
        "    raise SystemExit('the self test must not run in the child')\n"
    )
    run = run_module_patched(module, "-p", "no:cacheprovider", timeout=60)
    assert run.returncode == 1 and not run.timed_out, run.report()
    assert "1 failed, 1 passed, 1 deselected" in run.stdout
    assert "socket patched: True" in run.stdout
    report = run.report(lines=1000)
    assert report.startswith(f"patched run of {module} exited with 1\n") and "the failure shows" in report


@pytest.mark.skipif(running_patched(), reason="the plain run proves the harness; the patched one would nest")
def test_patched_run_is_bounded(tmp_path: Path) -> None:
    module = tmp_path / "test_hangs.py"
    module.write_text("import time\ndef test_hangs():\n    time.sleep(60)\n")
    started = time.monotonic()
    run = run_module_patched(module, "-p", "no:cacheprovider", timeout=6)
    assert time.monotonic() - started < 30
    assert run.timed_out and run.returncode != 0
    assert "timed out after 6 s and was killed" in run.report()
    assert "test_hangs" in run.stderr, run.stderr  # the greenlets' stacks name where it hung


def test_module_passes_under_patch_all() -> None:
    run = run_module_patched(__file__)
    assert run.returncode == 0, run.report()
