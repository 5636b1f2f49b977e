"""Second reading of issue 14 (request path on hub callbacks, send_file, pool spreading): bugs found.

Each test fails on the code as reviewed; see the docstrings for what goes wrong and where.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gevent
import gevent.socket
import pytest
from gevent.event import Event

from nexus_green import Client
from nexus_green.connection import Connection, ConnectionOptions
from nexus_green.protocol.files import FILE_LAST
from nexus_green.protocol.frames import Frame, FrameDecoder, encode_frame

pytestmark = pytest.mark.usefixtures("leakcheck")

KiB = 1024
MiB = 1024 * KiB


class _Peer:
    """A loopback peer that reads only when told to, at a bounded rate, and answers every request frame.

    ``order`` records the fid of each request frame in the order it arrived;
    ``files_received`` counts file-commit frames.
    """

    def __init__(self, *, reading: bool = True, read_size: int = 64 * KiB, pause: float = 0.0) -> None:
        self.listener = gevent.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * KiB)  # no receive autotuning
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(8)
        self.port = self.listener.getsockname()[1]
        self.reading = Event()
        if reading:
            self.reading.set()
        self.read_size = read_size
        self.pause = pause
        self.order: list[int] = []
        self.body_bytes = 0
        self.conns: list[Any] = []
        self.handlers: list[gevent.Greenlet] = []
        self.task = gevent.spawn(self._serve)

    @property
    def url(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    def _serve(self) -> None:
        while True:
            sock, _ = self.listener.accept()
            self.conns.append(sock)
            self.handlers.append(gevent.spawn(self._handle, sock))

    def _handle(self, sock: Any) -> None:
        dec = FrameDecoder(max_frame_size=256 * MiB)
        try:
            while True:
                self.reading.wait()
                data = sock.recv(self.read_size)
                if not data:
                    return
                for f in dec.feed(data):
                    if f.tp & 0x01:  # a heartbeat: answer it
                        continue
                    self.order.append(f.fid)
                    self.body_bytes += len(f.body)
                    if f.headers.get("file-offset") is not None and f.headers.get(FILE_LAST) != "1":
                        continue  # a file chunk: no answer
                    sock.sendall(encode_frame(Frame(qid=f.qid, fid=f.fid, code=200, res=1, body=b"ok")))
                if self.pause:
                    gevent.sleep(self.pause)
        except OSError:
            return
        finally:
            sock.close()

    def close(self) -> None:
        self.task.kill()
        self.reading.set()
        gevent.killall(self.handlers, timeout=5)
        self.listener.close()
        for s in self.conns:
            s.close()


@pytest.fixture
def peer_factory() -> Iterator[Any]:
    peers: list[_Peer] = []

    def make(**kw: Any) -> _Peer:
        p = _Peer(**kw)
        peers.append(p)
        return p

    yield make
    for p in peers:
        p.close()


def test_pool_does_not_retire_a_connection_in_the_middle_of_send_file(tmp_path: Path, peer_factory: Any) -> None:
    """A link busy with send_file counts as idle for the pool's health pass, which closes it mid-file.

    send_file_until (connection.py) forgets the Qid of every data chunk
    (``self.session.forget(qid)``), so until the commit frame is queued the
    connection has nothing pending and ``Connection.idle`` is True.
    ``ConnectionPool.maintain`` (pool.py) retires idle links past
    ``max_lifetime`` (or ``max_idle_time``): it closes the link carrying the
    upload and send_file fails with ConnectionClosed. A request of the same
    duration is protected (``if not conn.idle: continue``); a file is not.
    """
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(3 * MiB))
    peer = peer_factory(read_size=32 * KiB, pause=0.005)  # about 6 MB/s: the transfer takes ~0.5 s
    with Client(
        peer.url,
        timeout=20,
        max_lifetime=0.1,
        health_check_interval=0.01,
        max_write_buffer=256 * KiB,
        socket_options=((socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * KiB),),
    ) as client:
        with gevent.Timeout(20):
            resp = client.send_file(src, 9, chunk_size=64 * KiB, name="x.bin")
    assert resp.code == 200
    assert peer.body_bytes == 3 * MiB


def test_write_queue_room_is_first_come_first_served(peer_factory: Any) -> None:
    """A caller that comes while others wait for room in the write queue jumps ahead of them.

    docs/connections.md ("Bounds") and the comment on ``_room_q`` promise the
    waiters room "first come first served". But ``request_until`` only calls
    ``_wait_for_room`` when its own frame does not fit
    (``self._wbytes + size > self._max_wbytes``); it never looks at
    ``self._room_q``. A small request made after a large one began waiting is
    queued at once, ahead of it; under steady small traffic a large request
    never gets in and times out (phase write) while later ones pass.
    """
    peer = peer_factory(reading=False)
    opts = ConnectionOptions(
        request_timeout=20,
        max_write_buffer=4 * MiB,
        socket_options=((socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * KiB),),
    )
    with Connection(peer.url, options=opts) as conn, gevent.Timeout(20):
        first = gevent.spawn(conn.request, b"a" * (3 * MiB), fid=1)
        gevent.sleep(0.05)
        queued = conn.buffered()[1]
        # precondition: the peer does not read, most of the first body waits in the queue,
        # so a 2 MiB body does not fit beside it and a 100-byte one does
        assert 2 * MiB < queued < 4 * MiB - 200
        big = gevent.spawn(conn.request, b"b" * (2 * MiB), fid=2)  # does not fit: waits for room
        gevent.sleep(0.02)
        assert conn.buffered()[1] == queued  # it waits
        small = gevent.spawn(conn.request, b"c" * 100, fid=3)  # came after it
        gevent.sleep(0.02)
        peer.reading.set()
        gevent.joinall([first, big, small], raise_error=True)
    assert peer.order == [1, 2, 3]
