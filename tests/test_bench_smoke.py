"""The benchmark tooling of issue 14 works: the C echo peer answers frames exactly, and a matrix cell runs.

Benchmarks are not tests (no timing is asserted here); this checks that the
peer the matrix trusts echoes byte for byte -- Qid, Res=1, Code=200, Tp, a
1 MiB body, a heartbeat, and answers it could only write in parts -- and that
one small cell of bench/bench_matrix.py runs end to end against it.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
HDR = struct.Struct(">IHHBBIIIH")


@pytest.fixture
def bench(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.syspath_prepend(str(BENCH))
    import peers

    yield peers


@pytest.fixture
def peer(bench: Any) -> Iterator[Any]:
    assert shutil.which("cc") or shutil.which("gcc"), "the C peer needs a C compiler (apt-get install gcc)"
    assert bench.build_c_peer() is not None
    p = bench.start_peer("c")
    assert p.kind == "c"
    yield p
    p.stop()


def recv_exact(sock: socket.socket, n: int, within: float = 10.0) -> bytes:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    deadline = time.monotonic() + within
    while got < n:
        assert time.monotonic() < deadline, f"{got} of {n} bytes in {within} s"
        k = sock.recv_into(view[got:])
        assert k, "the peer closed the connection"
        got += k
    return bytes(buf)


def read_frame(sock: socket.socket) -> tuple[tuple[int, ...], bytes]:
    head = HDR.unpack(recv_exact(sock, 24))
    return head, recv_exact(sock, head[0] - 20)


def request(qid: int, body: bytes, tp: int = 0, fid: int = 1, dh: int = 0) -> bytes:
    return HDR.pack(20 + len(body), 0x7A5A, 1, tp, 0, qid, fid, 0, dh) + body


def test_c_peer_echoes_frames_exactly(peer: Any) -> None:
    big = os.urandom(1 << 20)
    with socket.create_connection(("127.0.0.1", peer.port), timeout=5) as s:
        heartbeat = HDR.pack(20, 0x7A5A, 1, 0x01, 0, 0, 0xFFFF, 0, 0)
        # several frames in one write, the 1 MiB one split across writes
        s.sendall(request(7, b"hello", tp=0x20, fid=42, dh=0) + heartbeat + request(0xFFFFFFFF, b""))
        s.sendall(request(8, big)[:1000])
        s.sendall(request(8, big)[1000:])
        answers = [read_frame(s) for _ in range(4)]
    (h1, b1), (h2, b2), (h3, b3), (h4, b4) = answers
    assert h1 == (25, 0x7A5A, 1, 0x20, 1, 7, 42, 200, 0) and b1 == b"hello"
    assert h2 == (20, 0x7A5A, 1, 0x01, 1, 0, 0xFFFF, 0, 0) and b2 == b""
    assert h3 == (20, 0x7A5A, 1, 0, 1, 0xFFFFFFFF, 1, 200, 0) and b3 == b""
    assert h4 == (20 + len(big), 0x7A5A, 1, 0, 1, 8, 1, 200, 0) and b4 == big


def test_c_peer_finishes_answers_it_wrote_in_parts(peer: Any) -> None:
    bodies = [os.urandom(1 << 20) for _ in range(12)]
    s = socket.create_connection(("127.0.0.1", peer.port), timeout=10)
    # 12 MiB of answers cannot all sit in the socket buffers: the peer's sends return short while the
    # reader waits, and it resumes them on EPOLLOUT (a buffer below the 64 KiB loopback MSS would crawl)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 256 * 1024)
    errors: list[BaseException] = []

    def write() -> None:
        try:
            for i, body in enumerate(bodies):
                s.sendall(request(100 + i, body))
        except BaseException as exc:  # reported below
            errors.append(exc)

    writer = threading.Thread(target=write)
    writer.start()
    try:
        # read slowly at first so the peer has to keep answers pending and resume them on EPOLLOUT
        first = s.recv(1)
        threading.Event().wait(0.2)
        got = first + recv_exact(s, 23)
        head = HDR.unpack(got)
        answers = [(head, recv_exact(s, head[0] - 20))] + [read_frame(s) for _ in range(len(bodies) - 1)]
    finally:
        writer.join(10)
        s.close()
    assert not writer.is_alive() and not errors
    for i, (head, body) in enumerate(answers):
        assert head[4:8] == (1, 100 + i, 1, 200)
        assert body == bodies[i]
    stats = peer.stop()
    fields = dict(kv.split("=") for kv in stats.split()[1:])
    assert int(fields["partial_writes"]) > 0, stats
    assert fields["frames"] == str(len(bodies)) and fields["closed_bad"] == "0"


def test_c_peer_closes_a_connection_that_breaks_the_framing(peer: Any) -> None:
    with socket.create_connection(("127.0.0.1", peer.port), timeout=5) as s:
        s.sendall(HDR.pack(20, 0x1234, 1, 0, 0, 1, 1, 0, 0))
        assert s.recv(10) == b""
    assert "closed_bad=1" in peer.stop()


def test_one_matrix_cell_runs_against_the_c_peer(bench: Any, tmp_path: Path) -> None:
    import bench_matrix

    out = tmp_path / "matrix.json"
    argv = ["--only", "4KiB/10", "--rounds", "1", "--seconds", "0.2", "--warmup", "0.05"]
    assert bench_matrix.main([*argv, "--contenders", "nexus,gevent", "--peer", "c", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["meta"]["peer"].startswith("C epoll echo peer")
    (cell,) = data["cells"]
    assert (cell["size"], cell["conc"]) == (4096, 10)
    for name in ("nexus", "gevent"):
        (run,) = cell["runs"][name]
        assert run["errors"] == 0 and run["requests"] > 0, run
    assert cell["ratio_gevent"] == pytest.approx(cell["median_rps"]["nexus"] / cell["median_rps"]["gevent"])
    assert "frames=" in data["meta"]["peer_stats"]


def test_matrix_write_docs_replaces_only_the_marked_part(bench: Any, tmp_path: Path) -> None:
    import bench_matrix

    doc = tmp_path / "b.md"
    doc.write_text(f"# head\n\n{bench_matrix.BEGIN}\nold table\n{bench_matrix.END}\n\n## after\n")
    bench_matrix.write_docs("new table", doc)
    assert doc.read_text() == f"# head\n\n{bench_matrix.BEGIN}\nnew table\n{bench_matrix.END}\n\n## after\n"
    doc.write_text("no markers\n")
    with pytest.raises(SystemExit, match="markers"):
        bench_matrix.write_docs("x", doc)


def test_turnaround_runs_both_contenders_and_its_parts_add_up(bench: Any, tmp_path: Path) -> None:
    import bench_turnaround

    out = tmp_path / "turnaround.json"
    assert bench_turnaround.main(["--rounds", "1", "--requests", "300", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert set(data["summary"]) == {"nexus", "gevent"}
    for row in data["summary"].values():
        assert 0 < row["turnaround"] <= row["turnaround_p90"] and row["send"] > 0 and row["wait"] > 0
        assert row["round_trip"] == pytest.approx(row["turnaround"] + row["send"] + row["wait"])
    (nexus,) = data["runs"]["nexus"]
    assert (Path(nexus["origin"]) / "nexus_green" / "__init__.py").exists()  # where the Client under test came from


def test_ab_compares_raw_and_this_tree_round_by_round(bench: Any, tmp_path: Path) -> None:
    import bench_ab

    out = tmp_path / "ab.json"
    argv = ["--conc", "2", "--size", "64", "--rounds", "2", "--seconds", "0.2", "--warmup", "0.05"]
    assert bench_ab.main([*argv, "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert set(data["summary"]) == {"raw", "after"} and data["summary"]["raw"]["ratio_raw"] == 1.0
    for name in ("raw", "after"):
        assert len(data["runs"][name]) == 2 and all(r["requests"] > 0 and r["cpu_us"] > 0 for r in data["runs"][name])
    after = data["summary"]["after"]
    ratios = [a["rps"] / r["rps"] for a, r in zip(data["runs"]["after"], data["runs"]["raw"], strict=True)]
    assert after["ratio_raw"] == pytest.approx(sorted(ratios)[0] + (sorted(ratios)[1] - sorted(ratios)[0]) / 2)
