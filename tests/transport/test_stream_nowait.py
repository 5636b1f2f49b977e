"""Stream's non-blocking calls for hub callbacks: recv_into_nowait, sendmsg_nowait, watch, nonblocking.

Real sockets on loopback (socketpairs and TCP); the TLS case uses the
certificate kit of nexus_green.testing.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from contextlib import closing
from typing import Any

import gevent
import pytest
from gevent import socket as gsocket

from nexus_green.errors import ConnectionLost
from nexus_green.testing import TLSEchoServer, make_test_certificates
from nexus_green.testing.tls import CertificateKit
from nexus_green.transport.stream import IOV_MAX, Stream
from nexus_green.transport.tls import TLSConfig, wrap

pytestmark = pytest.mark.usefixtures("leakcheck")

_RST = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST


@pytest.fixture
def pair() -> Iterator[tuple[Stream, Any]]:
    a, b = gsocket.socketpair()
    s = Stream(a, "pair")
    try:
        yield s, b
    finally:
        s.close()
        b.close()


@pytest.fixture
def tcp_pair() -> Iterator[tuple[Stream, Any]]:
    """A Stream over a real loopback TCP connection, and the accepted peer socket."""
    listener = gsocket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    client = gsocket.create_connection(listener.getsockname(), timeout=5)
    peer, _ = listener.accept()
    listener.close()
    s = Stream(client, "tcp-pair")
    try:
        yield s, peer
    finally:
        s.close()
        peer.close()


def wait_until(check: Any, timeout: float = 5.0) -> bool:
    with gevent.Timeout(timeout, False):
        while not check():
            gevent.sleep(0.005)
        return True
    return False


# --------------------------------------------------------------------------- recv_into_nowait
def test_recv_into_nowait_reads_what_is_there_and_counts(pair: tuple[Stream, Any]) -> None:
    s, peer = pair
    buf = memoryview(bytearray(16))
    assert s.recv_into_nowait(buf) == -1  # nothing there: never blocks
    peer.sendall(b"abcdef")
    assert wait_until(lambda: s.recv_into_nowait(buf[:4]) == 4)
    assert bytes(buf[:4]) == b"abcd"
    assert s.recv_into_nowait(buf[4:]) == 2
    assert bytes(buf[:6]) == b"abcdef"
    assert s.bytes_received == 6
    assert s.recv_into_nowait(buf) == -1


def test_recv_into_nowait_gives_zero_at_eof(pair: tuple[Stream, Any]) -> None:
    s, peer = pair
    peer.sendall(b"x")
    peer.close()
    buf = memoryview(bytearray(4))
    assert s.recv_into_nowait(buf) == 1
    assert s.recv_into_nowait(buf) == 0
    assert s.bytes_received == 1


def test_recv_into_nowait_from_a_reset_peer_is_connection_lost(tcp_pair: tuple[Stream, Any]) -> None:
    s, peer = tcp_pair
    s.sendmsg_nowait([b"unread"])  # unread data at the peer makes its close() a RST
    peer.setsockopt(gsocket.SOL_SOCKET, gsocket.SO_LINGER, _RST)
    peer.close()
    buf = memoryview(bytearray(8))
    outcome: list[Any] = []

    def reset_seen() -> bool:
        try:
            outcome.append(s.recv_into_nowait(buf))
        except ConnectionLost as exc:
            outcome.append(exc)
            return True
        return False

    assert wait_until(reset_seen)
    err = outcome[-1]
    assert isinstance(err, ConnectionLost)
    assert "recv from tcp-pair" in str(err)
    assert isinstance(err.__cause__, ConnectionResetError)
    assert all(o == -1 for o in outcome[:-1])  # before the RST arrived: "nothing there", never an exception


@pytest.mark.parametrize("how", ["close", "detach"])
def test_calls_on_a_closed_stream_are_connection_lost(how: str) -> None:
    a, b = gsocket.socketpair()
    s = Stream(a, "gone")
    try:
        getattr(s, how)()
        assert s.closed
        assert not s.nonblocking
        with pytest.raises(ConnectionLost, match="recv on closed stream to gone"):
            s.recv_into_nowait(memoryview(bytearray(4)))
        with pytest.raises(ConnectionLost, match="send on closed stream to gone"):
            s.sendmsg_nowait([b"x"])
        with pytest.raises(ConnectionLost, match="watch on closed stream to gone"):
            s.watch()
        with pytest.raises(ConnectionLost, match="watch on closed stream to gone"):
            s.watch(write=True)
    finally:
        a.close()
        b.close()


# --------------------------------------------------------------------------- sendmsg_nowait
def test_sendmsg_nowait_writes_buffers_in_order_without_joining(pair: tuple[Stream, Any]) -> None:
    s, peer = pair
    body = bytearray(b"B" * 1000)
    n = s.sendmsg_nowait([b"head:", memoryview(body)[:500], memoryview(body)[500:], b":tail"])
    assert n == 5 + 1000 + 5
    assert s.bytes_sent == n
    got = b""
    while len(got) < n:
        got += peer.recv(4096)
    assert got == b"head:" + b"B" * 1000 + b":tail"


def test_sendmsg_nowait_returns_zero_when_the_kernel_is_full_and_resumes(pair: tuple[Stream, Any]) -> None:
    s, peer = pair
    chunk = b"z" * 65536
    total = 0
    for _ in range(10_000):
        n = s.sendmsg_nowait([chunk])
        if n == 0:
            break
        total += n
    else:
        pytest.fail("a socketpair never filled up")
    assert s.sendmsg_nowait([b"more"]) == 0  # still full: nothing taken, nothing raised
    assert s.bytes_sent == total
    # The peer drains; a write watcher fires, and the kernel takes more.
    fired: list[int] = []
    w = s.watch(write=True)
    w.start(lambda: (fired.append(1), w.stop()))
    drained = 0
    while drained < total:
        drained += len(peer.recv(1 << 20))
    assert wait_until(lambda: bool(fired))
    assert s.sendmsg_nowait([b"more"]) == 4
    assert peer.recv(16) == b"more"


def test_sendmsg_nowait_to_a_reset_peer_is_connection_lost(tcp_pair: tuple[Stream, Any]) -> None:
    s, peer = tcp_pair
    peer.setsockopt(gsocket.SOL_SOCKET, gsocket.SO_LINGER, _RST)
    peer.close()
    errors: list[ConnectionLost] = []

    def fails() -> bool:
        try:
            s.sendmsg_nowait([b"x" * 1024])
        except ConnectionLost as exc:
            errors.append(exc)
            return True
        return False

    assert wait_until(fails)
    assert "send to tcp-pair" in str(errors[0])
    assert isinstance(errors[0].__cause__, OSError)


def test_iov_max_is_a_sane_bound() -> None:
    assert 16 <= IOV_MAX <= 1024


def test_sendmsg_nowait_takes_iov_max_buffers(pair: tuple[Stream, Any]) -> None:
    s, peer = pair
    bufs = [bytes([i % 251]) * 3 for i in range(IOV_MAX)]
    assert s.sendmsg_nowait(bufs) == 3 * IOV_MAX
    got = b""
    while len(got) < 3 * IOV_MAX:
        got += peer.recv(65536)
    assert got == b"".join(bufs)


# --------------------------------------------------------------------------- watch
def test_read_watcher_fires_on_data_and_close_stops_it(pair: tuple[Stream, Any]) -> None:
    s, peer = pair
    hits: list[int] = []
    w = s.watch()
    assert not w.active
    w.start(lambda: (hits.append(1), w.stop()))
    gevent.sleep(0.02)
    assert hits == []  # nothing to read yet
    peer.sendall(b"x")
    assert wait_until(lambda: hits == [1])
    w.start(hits.append, 2)  # level-triggered: the unread byte fires it again
    assert wait_until(lambda: 2 in hits)
    w.stop()
    # Readable now (the byte is still unread): started, then closed before the hub runs.
    w2, w3 = s.watch(), s.watch(write=True)
    w2.start(hits.append, 3)
    w3.start(hits.append, 4)
    assert w2.active and w3.active
    s.close()
    assert not w.active and not w2.active and not w3.active
    gevent.sleep(0.05)
    assert 3 not in hits and 4 not in hits  # a closed stream's watchers never run


def test_detach_stops_watchers_before_they_run() -> None:
    a, b = gsocket.socketpair()
    try:
        s = Stream(a, "detach")
        b.sendall(b"x")  # readable, and always writable: both would fire at the next turn of the loop
        gevent.sleep(0.01)
        hits: list[int] = []
        r, w = s.watch(), s.watch(write=True)
        r.start(hits.append, 1)
        w.start(hits.append, 2)
        s.detach()
        assert not r.active and not w.active
        gevent.sleep(0.05)
        assert hits == []
        assert s.closed
    finally:
        a.close()
        b.close()


def test_watchers_run_while_the_stream_is_open() -> None:
    """The control for the two tests above: the same watchers do fire when nothing stops them."""
    a, b = gsocket.socketpair()
    s = Stream(a, "open")
    try:
        b.sendall(b"x")
        gevent.sleep(0.01)
        hits: list[int] = []
        r, w = s.watch(), s.watch(write=True)
        r.start(lambda: (hits.append(1), r.stop()))
        w.start(lambda: (hits.append(2), w.stop()))
        assert wait_until(lambda: sorted(hits) == [1, 2])
    finally:
        s.close()
        b.close()


def test_close_is_idempotent_with_watchers(pair: tuple[Stream, Any]) -> None:
    s, _ = pair
    w = s.watch()
    w.start(lambda: None)
    s.close()
    s.close()
    assert not w.active and s.closed


# --------------------------------------------------------------------------- TLS
@pytest.fixture(scope="module")
def kit() -> Iterator[CertificateKit]:
    with make_test_certificates() as k:
        yield k


def test_tls_streams_are_not_nonblocking(kit: CertificateKit) -> None:
    with TLSEchoServer(kit.server_context()) as server:
        with closing(gsocket.create_connection(server.address, timeout=5)) as raw:
            tls_sock = wrap(raw, TLSConfig(ca_file=kit.ca_file), "localhost", 5.0, port=server.address[1])
            s = Stream(tls_sock, "tls")
            try:
                assert s.nonblocking is False
                # The greenlet path still works on it.
                s.sendall(b"ping")
                assert s.recv(4) == b"ping"
            finally:
                s.close()


def test_plain_tcp_streams_are_nonblocking(tcp_pair: tuple[Stream, Any]) -> None:
    s, _ = tcp_pair
    assert s.nonblocking is True


# --------------------------------------------------------------------------- the other calls a hub callback may make
def test_send_progress_is_none_where_the_kernel_cannot_tell(pair: tuple[Stream, Any]) -> None:
    s, _ = pair
    assert s.send_progress() is None  # a unix socketpair: SIOCOUTQ counts only for TCP
    s.close()
    assert s.send_progress() is None


def test_send_progress_counts_acknowledged_and_queued_bytes_on_tcp(tcp_pair: tuple[Stream, Any]) -> None:
    s, peer = tcp_pair
    assert s.sendmsg_nowait([b"abc", b"de"]) == 5
    assert peer.recv(5) == b"abcde"
    assert wait_until(lambda: s.send_progress() == (5, 0))


def test_send_reporting_on_a_closed_stream_and_to_a_reset_peer(tcp_pair: tuple[Stream, Any]) -> None:
    s, peer = tcp_pair
    peer.setsockopt(gsocket.SOL_SOCKET, gsocket.SO_LINGER, _RST)
    peer.close()
    taken: list[int] = []
    with gevent.Timeout(5):
        with pytest.raises(ConnectionLost, match="send to tcp-pair"):
            for _ in range(1000):  # the RST arrives after a write or two
                s.send_reporting(b"y" * 65536, taken.append)
                gevent.sleep(0.001)
    s.close()
    with pytest.raises(ConnectionLost, match="send on closed stream to tcp-pair"):
        s.send_reporting(b"z", taken.append)


def test_sendfile_nowait_full_socket_and_closed_stream(pair: tuple[Stream, Any], tmp_path: Any) -> None:
    s, peer = pair
    path = tmp_path / "data.bin"
    path.write_bytes(b"f" * 65536)
    with open(path, "rb") as f:
        while s.sendmsg_nowait([b"x" * 65536]):
            pass  # fill the socket
        assert s.sendfile_nowait(f.fileno(), 0, 65536) == -1  # the kernel is full: nothing taken
        s.close()
        with pytest.raises(ConnectionLost, match="sendfile on closed stream to pair"):
            s.sendfile_nowait(f.fileno(), 0, 10)


def test_nowait_calls_on_a_tls_stream_say_it_is_tls_not_closed() -> None:
    """Found by review: a TLS stream is open, so 'closed stream' was the wrong message."""
    from nexus_green.errors import UsageError

    stream = Stream.__new__(Stream)
    stream._sock = object()  # an open socket that is not a plain gevent socket (as SSLSocket)
    stream._raw = None
    stream.label = "tls-peer"
    stream._watchers = []
    for call in (
        lambda: stream.recv_into_nowait(memoryview(bytearray(4))),
        lambda: stream.sendmsg_nowait([b"x"]),
        lambda: stream.sendfile_nowait(0, 0, 1),
    ):
        with pytest.raises(UsageError, match="needs a plain TCP stream; tls-peer is TLS"):
            call()
