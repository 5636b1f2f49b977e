"""A fast NexusKit echo peer for benchmarks: one epoll loop, no gevent.

It answers every request frame with the same body, Res=1 and Code=200, and
every heartbeat with a heartbeat response. It is deliberately minimal so that
it is never the bottleneck of a client-side comparison: its CPU use is
reported by each benchmark run.

Run: ``python bench/echo_peer.py`` prints ``listening on 127.0.0.1:PORT``.
"""

from __future__ import annotations

import select
import socket
import struct
import sys

_HDR = struct.Struct(">IHHBBIIIH")


def serve(port: int = 0) -> None:
    lsock = socket.socket()
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind(("127.0.0.1", port))
    lsock.listen(512)
    lsock.setblocking(False)
    print(f"listening on 127.0.0.1:{lsock.getsockname()[1]}", flush=True)
    ep = select.epoll()
    ep.register(lsock.fileno(), select.EPOLLIN)
    conns: dict[int, tuple[socket.socket, bytearray]] = {}
    unpack, pack = _HDR.unpack_from, _HDR.pack
    while True:
        for fd, _ in ep.poll():
            if fd == lsock.fileno():
                try:
                    s, _addr = lsock.accept()
                except BlockingIOError:
                    continue
                s.setblocking(False)
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                conns[s.fileno()] = (s, bytearray())
                ep.register(s.fileno(), select.EPOLLIN)
                continue
            s, buf = conns[fd]
            try:
                data = s.recv(262144)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                data = b""
            if not data:
                ep.unregister(fd)
                del conns[fd]
                s.close()
                continue
            buf += data
            out = []
            pos, n = 0, len(buf)
            while n - pos >= 24:
                length, tag, ver, tp, res, qid, fid, code, dh = unpack(buf, pos)
                end = pos + 4 + length
                if end > n:
                    break
                out.append(pack(length, tag, ver, tp, 1, qid, fid, 0 if tp & 1 else 200, dh))
                out.append(buf[pos + 24 : end])
                pos = end
            del buf[:pos]
            if out:
                s.setblocking(True)  # replies are small; a blocking send keeps this loop simple
                s.sendall(b"".join(out))
                s.setblocking(False)


if __name__ == "__main__":
    serve(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
