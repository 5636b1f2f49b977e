"""send_file: files as bounded frames, by os.sendfile on plain TCP, read and sent over TLS.

Every transfer lands through the embedded server's FileReceiver on disk and is
compared byte for byte; the bad paths (strict mode, a missing file, a receiver
without a directory, a budget that ends mid-file, a link lost mid-file, a file
that shrinks) end with a named error and leak no descriptor.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gevent
import pytest

from nexus_green import Client
from nexus_green.connection import Connection, ConnectionOptions
from nexus_green.errors import ConnectionLost, LocalProtocolError, NexusTimeout, RemoteError
from nexus_green.protocol.files import FILE_ID, FILE_NAME, FILE_OFFSET, FILE_SIZE
from nexus_green.protocol.frames import Frame
from nexus_green.testing import FID_ECHO, FID_FILE, EmbeddedServer, run_module_patched
from nexus_green.testing.files import FileReceiver
from nexus_green.testing.tls import make_test_certificates
from nexus_green.transport.stream import Stream

pytestmark = pytest.mark.usefixtures("leakcheck")

MiB = 1024 * 1024


@pytest.fixture
def src(tmp_path: Path) -> Path:
    path = tmp_path / "src.bin"
    path.write_bytes(os.urandom(5 * MiB + 12345))
    return path


@pytest.fixture
def inbox(tmp_path: Path) -> Path:
    d = tmp_path / "inbox"
    d.mkdir()
    return d


@pytest.fixture
def count_sendfile(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = Stream.sendfile_nowait

    def counting(self: Stream, fd: int, offset: int, count: int) -> int:
        n = real(self, fd, offset, count)
        calls.append(n)
        return n

    monkeypatch.setattr(Stream, "sendfile_nowait", counting)
    return calls


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_file_crosses_plain_tcp_by_sendfile_byte_for_byte(src: Path, inbox: Path, count_sendfile: list[int]) -> None:
    with EmbeddedServer(files_dir=str(inbox)) as server, Client(server.url) as client:
        answer = json.loads(client.send_file(src, FID_FILE, name="copy.bin").body)
        assert (inbox / "copy.bin").read_bytes() == src.read_bytes()
        assert answer == {"name": "copy.bin", "size": src.stat().st_size, "sha256": sha(src)}
        assert (
            sum(n for n in count_sendfile if n > 0) == src.stat().st_size
        )  # every body byte went file -> socket in the kernel
        assert server.files.completed == 1 and server.files.in_progress == 0
        assert client.request(b"still fine", fid=FID_ECHO).body == b"still fine"


def test_requests_share_the_link_with_a_file_in_transfer(src: Path, inbox: Path) -> None:
    with EmbeddedServer(files_dir=str(inbox)) as server, Client(server.url, max_size=1) as client:
        client.request(b"warm", fid=FID_ECHO)
        transfer = gevent.spawn(client.send_file, src, FID_FILE, chunk_size=256 * 1024)
        answers = [client.request(b"%d" % i, fid=FID_ECHO).body for i in range(50)]
        resp = transfer.get(timeout=30)
        assert answers == [b"%d" % i for i in range(50)]
        assert json.loads(resp.body)["sha256"] == sha(src)
        assert (inbox / "src.bin").read_bytes() == src.read_bytes()


@pytest.mark.parametrize("mode", ["tls", "io_greenlets"])
def test_without_sendfile_the_file_is_read_and_sent(
    src: Path, inbox: Path, count_sendfile: list[int], mode: str
) -> None:
    if mode == "tls":
        with make_test_certificates() as kit, EmbeddedServer(files_dir=str(inbox), tls=kit.server_context()) as server:
            with Client(server.url, tls=kit.client_config()) as client:
                resp = client.send_file(src, FID_FILE, chunk_size=300_000)
    else:
        with EmbeddedServer(files_dir=str(inbox)) as server, Client(server.url, io_greenlets=True) as client:
            resp = client.send_file(src, FID_FILE, chunk_size=300_000)
    assert json.loads(resp.body)["sha256"] == sha(src)
    assert (inbox / "src.bin").read_bytes() == src.read_bytes()
    assert count_sendfile == []


def test_an_empty_file_is_one_commit_frame(tmp_path: Path, inbox: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    with EmbeddedServer(files_dir=str(inbox)) as server, Client(server.url) as client:
        assert json.loads(client.send_file(empty, FID_FILE).body)["size"] == 0
        assert (inbox / "empty").read_bytes() == b""
        assert server.frames_received == 1


def test_strict_mode_refuses_before_opening_the_file(tmp_path: Path) -> None:
    with EmbeddedServer() as server, Connection(server.url, options=ConnectionOptions(strict=True)) as conn:
        with pytest.raises(LocalProtocolError, match="strict mode cannot send a file"):
            conn.send_file(tmp_path / "does-not-matter", FID_FILE)
        assert server.frames_received == 0


def test_bad_arguments_are_named_and_send_nothing(tmp_path: Path, src: Path) -> None:
    with EmbeddedServer() as server, Client(server.url) as client:
        client.connect()
        with pytest.raises(FileNotFoundError):
            client.send_file(tmp_path / "missing", FID_FILE)
        with pytest.raises(ValueError, match="chunk_size must be at least 1 byte"):
            client.send_file(src, FID_FILE, chunk_size=0)
        # A chunk the peer's frame limit (the same default as ours) would refuse, dropping the link.
        with pytest.raises(ValueError, match="within max_frame_size 16777216"):
            client.send_file(src, FID_FILE, chunk_size=16 * 1024 * 1024)
        assert server.frames_received == 0 and client.pool.stats()["connected"] == 1
        with pytest.raises(RemoteError, match="without files_dir") as info:
            client.send_file(src, FID_FILE)  # a server that takes no files
        assert info.value.code == 501


def test_a_budget_that_ends_mid_file_takes_back_the_chunks_not_started(src: Path, inbox: Path) -> None:
    big = src.parent / "big.bin"
    big.write_bytes(os.urandom(40 * MiB))
    with EmbeddedServer(files_dir=str(inbox)) as server, Client(server.url, max_size=1) as client:
        client.request(b"warm", fid=FID_ECHO)
        with pytest.raises(NexusTimeout):
            client.send_file(big, FID_FILE, chunk_size=64 * 1024, timeout=0.05)
        conn = client.pool.connections[0]
        assert all(not hasattr(e, "file") for e in conn._wbuf[1:])  # nothing queued but a chunk already started
        # The link stays usable: a chunk already started finishes, the next request follows it.
        assert client.request(b"after", fid=FID_ECHO, timeout=10).body == b"after"
        server.files.close()  # the receiver drops the unfinished transfer
    assert not any(p.name.endswith(".part") for p in inbox.iterdir())
    # (the leakcheck fixture then finds every descriptor closed: the duplicated one of the file too)


def test_a_link_lost_mid_file_is_reported_and_the_receiver_refuses_the_commit(src: Path, inbox: Path) -> None:
    with EmbeddedServer(files_dir=str(inbox)) as server, Client(server.url, max_size=1) as client:
        client.request(b"warm", fid=FID_ECHO)
        killer = gevent.spawn_later(0.001, server.drop_connections)
        big = src.parent / "big.bin"
        big.write_bytes(os.urandom(64 * MiB))
        with pytest.raises((ConnectionLost, RemoteError)) as info:
            client.send_file(big, FID_FILE, chunk_size=64 * 1024, timeout=20)
        killer.join(timeout=5)
        if isinstance(info.value, RemoteError):
            assert info.value.code == 409  # the commit reached a receiver that missed chunks
        assert not (inbox / "big.bin").exists()


def test_a_file_that_shrinks_while_queued_closes_the_link_mid_frame(tmp_path: Path) -> None:
    path = tmp_path / "shrinks.bin"
    path.write_bytes(b"y" * 200_000)
    with EmbeddedServer(files_dir=str(tmp_path)) as server, Connection(server.url) as conn:
        conn.request(b"warm", fid=FID_ECHO)
        real = conn._send_file_chunk

        def truncate_then_send(stream: Any, chunk: Any) -> Any:
            os.truncate(path, 1000)
            return real(stream, chunk)

        conn._send_file_chunk = truncate_then_send  # type: ignore[method-assign]
        with pytest.raises(ConnectionLost):
            conn.send_file(path, FID_FILE, chunk_size=100_000, timeout=10)
        assert isinstance(conn.last_error, ConnectionLost) and "shrank" in str(conn.last_error)


# ---------------------------------------------------------------- the receiving side
@pytest.fixture
def rx(tmp_path: Path) -> Iterator[FileReceiver]:
    receiver = FileReceiver(tmp_path, max_open=2)
    yield receiver
    receiver.close()


def frame(file_id: str = "ab" * 16, body: bytes = b"", **headers: str) -> Frame:
    base = {FILE_ID: file_id, FILE_SIZE: "4", FILE_OFFSET: "0", FILE_NAME: "f.txt"}
    base.update({k.replace("_", "-"): v for k, v in headers.items()})
    return Frame(fid=FID_FILE, body=body, headers=base)


def test_receiver_refuses_malformed_frames(rx: FileReceiver) -> None:
    reply = rx.handle(frame(file_id="not-hex"))
    assert reply is not None and reply.code == 400 and b"file-id" in reply.body
    reply = rx.handle(frame(file_size="four"))
    assert reply is not None and reply.code == 400 and b"file-size" in reply.body


def test_receiver_refuses_an_incomplete_or_misfitting_file(rx: FileReceiver, tmp_path: Path) -> None:
    assert rx.handle(frame(body=b"ab")) is None
    reply = rx.handle(frame(file_offset="4", file_last="1", file_chunks="2"))
    assert reply is not None and reply.code == 409 and b"2 of 4 bytes in 1 of 2 chunks" in reply.body
    assert rx.handle(frame(file_id="cd" * 16, body=b"abcdef")) is None  # 6 bytes into a 4-byte file
    reply = rx.handle(frame(file_id="cd" * 16, file_offset="4", file_last="1", file_chunks="1"))
    assert reply is not None and reply.code == 409 and b"does not fit" in reply.body
    reply = rx.handle(frame(file_id="ef" * 16, file_offset="4", file_last="1", file_chunks="1"))
    assert reply is not None and reply.code == 409 and b"no chunk" in reply.body
    assert [p.name for p in tmp_path.iterdir()] == [] and rx.failed == 3


def test_receiver_bounds_open_transfers_and_keeps_names_inside_its_directory(rx: FileReceiver, tmp_path: Path) -> None:
    assert rx.handle(frame(file_id="01" * 16, body=b"a")) is None
    assert rx.handle(frame(file_id="02" * 16, body=b"a")) is None
    reply = rx.handle(frame(file_id="03" * 16, body=b"a"))
    assert reply is not None and reply.code == 503
    assert rx.handle(frame(file_id="01" * 16, body=b"bcd", file_offset="1")) is None
    reply = rx.handle(frame(file_id="01" * 16, file_offset="4", file_last="1", file_chunks="2", file_name="../../x"))
    assert reply is not None and reply.code == 200 and json.loads(reply.body)["name"] == "x"
    assert (tmp_path / "x").read_bytes() == b"abcd"
    rx.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x"]  # the unfinished transfer's part is gone


def test_module_passes_under_patch_all() -> None:
    run = run_module_patched(__file__, "-q", "-p", "no:cacheprovider", timeout=240)
    assert run.returncode == 0, run.report()


def test_receiver_drops_a_transfer_abandoned_for_abandon_after(tmp_path: Path) -> None:
    rx = FileReceiver(tmp_path, abandon_after=0.05)
    assert rx.handle(frame(file_id="0a" * 16, body=b"ab")) is None  # a sender that then went away
    assert rx.in_progress == 1
    gevent.sleep(0.1)
    assert rx.handle(frame(file_id="0b" * 16, body=b"cd")) is None  # the next transfer sweeps the old one
    assert rx.in_progress == 1 and rx.failed == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".{'0b' * 16}.part"]
    rx.close()


def test_a_missing_file_is_named_even_while_the_endpoint_is_down(tmp_path: Path) -> None:
    from nexus_green.testing import refusing_port

    with refusing_port() as peer, Client(peer.url, timeout=0.5) as client:
        with pytest.raises(FileNotFoundError, match="no such file"):
            client.send_file(tmp_path / "missing", FID_FILE)


def test_a_link_busy_with_a_file_counts_its_bytes_in_flight(src: Path, inbox: Path) -> None:
    with EmbeddedServer(files_dir=str(inbox)) as server, Connection(server.url) as conn:
        seen: list[int] = []
        real = conn._wake_writer

        def watch() -> None:
            seen.append(conn.bytes_in_flight)
            real()

        conn._wake_writer = watch  # type: ignore[method-assign]
        conn.send_file(src, FID_FILE, chunk_size=512 * 1024, timeout=20)
        assert max(seen) >= 512 * 1024  # the pool sees the upload's weight and spreads other work
        assert conn.bytes_in_flight == 0
