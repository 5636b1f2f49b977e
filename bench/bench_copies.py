"""Bytes allocated per request at large bodies (issue 14: down 70% or more at >= 64 KiB after the zero-copy path).

A Client sends bodies of 64 KiB and 1 MiB to the echo peer from 1 and from 10
greenlets. After a warm-up, many requests are measured; the request body is
made once and reused, so what is counted is what the library (and gevent, and
the socket module) allocates to send it, read the answer and hand over the
Response. Two figures per cell, each in its own child process:

* **allocated**: every byte Python's allocators are asked for (malloc and
  calloc sizes, plus the new size of every realloc), counted by a small C shim
  (bench/peer/alloc_counter.c, built with cc) wrapping the PyMem allocators. A
  copy of a body needs an allocation of its size, so this counts the copies.
  The unavoidable part is the caller's Response body (one body-sized bytes
  object per request): it is subtracted, and ``extra`` is what is left, also
  shown in bodies (``extra / body size``). The raw gevent baseline (sendall of
  header + body, recv_into a buffer, bytes of it) is measured the same way;
* **tracemalloc peak**: the highest traced memory above the start of the
  window (at c=1: per request, the median over requests), i.e. how many body
  copies are alive at once. tracemalloc sees only live memory, not memory
  allocated and freed again, which is why the shim exists; without a C
  compiler only this figure is given.

Run::

    python bench/bench_copies.py                       # this tree
    python bench/bench_copies.py --code /tmp/before     # another tree
    python bench/bench_copies.py --before /tmp/before   # both in one run, and the reduction

(``git worktree add /tmp/before HEAD`` before a change makes /tmp/before.)
Writes bench/results/copies.json.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Optional

from common import PREFIX, RESULTS, check_code_origin, code_env, frame, run_child
from peers import BUILD, HERE, build_native, start_peer

SIZES = [65536, 1 << 20]
CONCURRENCY = [1, 10]
SHIM_SOURCE = HERE / "peer" / "alloc_counter.c"
SHIM = BUILD / "alloc_counter.so"
COUNTERS = ("alloc_bytes", "alloc_calls", "realloc_bytes", "realloc_calls", "big_bytes", "big_calls")


def load_shim(path: str) -> Any:
    lib = ctypes.PyDLL(path)  # PyDLL: the GIL stays held while the allocators are swapped
    lib.alloc_counter_install.restype = ctypes.c_int
    lib.alloc_counter_install()
    return lib


def read_counters(lib: Any) -> dict[str, int]:
    return {name: ctypes.c_ulonglong.in_dll(lib, name).value for name in COUNTERS}


def requests_for(size: int, quick: bool) -> int:
    n = 200 if size >= 1 << 20 else 1000
    return n // 4 if quick else n


# ---------------------------------------------------------------- child
def child(contender: str, method: str, size: int, conc: int, n: int, port: int, shim: Optional[str]) -> dict[str, Any]:
    import tracemalloc

    import gevent
    from gevent import socket

    body = b"x" * size
    if contender == "nexus":
        from nexus_green import Client

        client = Client(f"tcp://127.0.0.1:{port}")
        client.connect()
        req = client.request

        def one(_: Any) -> int:
            return len(req(body, fid=1, timeout=10).body)

        workers: list[Any] = [None] * conc
    else:
        client = None
        workers = []
        for _ in range(conc):
            s = socket.create_connection(("127.0.0.1", port))
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            workers.append([s, 0])

        def one(w: Any) -> int:
            s = w[0]
            w[1] += 1
            s.sendall(frame(w[1], body))
            head = bytearray(24)
            got = 0
            while got < 24:
                got += s.recv_into(memoryview(head)[got:])
            length = PREFIX.unpack(head)[0]
            buf = bytearray(length - 20)
            view = memoryview(buf)
            got = 0
            while got < len(buf):
                k = s.recv_into(view[got:])
                if not k:
                    raise ConnectionError("peer closed")
                got += k
            return len(bytes(buf))

    def run(total: int, per_request: Optional[list[int]] = None) -> int:
        left = [total]
        done = [0]

        def worker(w: Any) -> None:
            while left[0] > 0:
                left[0] -= 1
                if per_request is not None:
                    tracemalloc.reset_peak()
                    cur = tracemalloc.get_traced_memory()[0]
                    if one(w) != size:
                        raise RuntimeError("short answer")
                    per_request.append(tracemalloc.get_traced_memory()[1] - cur)
                elif one(w) != size:
                    raise RuntimeError("short answer")
                done[0] += 1

        gevent.joinall([gevent.spawn(worker, w) for w in workers], raise_error=True)
        return done[0]

    run(max(20, n // 5))  # warm-up: buffers grown, every path taken
    res: dict[str, Any] = {"contender": contender, "method": method, "size": size, "conc": conc}
    if method == "alloc":
        if shim is None:
            raise SystemExit("--shim is needed for the allocation count")
        lib = load_shim(shim)
        run(max(10, n // 10))  # once more with the hook in place
        c0 = read_counters(lib)
        t0 = time.perf_counter()
        done = run(n)
        elapsed = time.perf_counter() - t0
        c1 = read_counters(lib)
        d = {k: (c1[k] - c0[k]) / done for k in COUNTERS}
        allocated = d["alloc_bytes"] + d["realloc_bytes"]
        res.update(
            requests=done,
            rps=done / elapsed,
            allocated_per_req=allocated,
            malloc_per_req=d["alloc_bytes"],
            realloc_per_req=d["realloc_bytes"],
            big_allocs_per_req=d["big_calls"],
            big_bytes_per_req=d["big_bytes"],
            extra_per_req=allocated - size,
            extra_bodies=(allocated - size) / size,
        )
    else:
        tracemalloc.start(1)
        run(max(10, n // 10))
        if conc == 1:
            per: list[int] = []
            done = run(n, per)
            res["peak_per_req"] = statistics.median(per)
        else:
            tracemalloc.reset_peak()
            cur = tracemalloc.get_traced_memory()[0]
            done = run(n)
            res["peak_per_req"] = tracemalloc.get_traced_memory()[1] - cur
        res["peak_bodies"] = res["peak_per_req"] / size
        res["requests"] = done
        tracemalloc.stop()
    if client is not None:
        client.close()
    for w in workers:
        if w is not None:
            w[0].close()
    return res


# ---------------------------------------------------------------- orchestration
def measure_tree(
    code: Optional[str], port: int, shim: Optional[Path], quick: bool, contenders: list[str]
) -> list[dict[str, Any]]:
    rows = []
    for contender in contenders:
        for size in SIZES:
            for conc in CONCURRENCY:
                row: dict[str, Any] = {"contender": contender, "size": size, "conc": conc}
                for method in (["alloc"] if shim else []) + ["tracemalloc"]:
                    argv = [__file__, "--child", contender, method, "--size", str(size), "--conc", str(conc)]
                    argv += ["--requests", str(requests_for(size, quick)), "--port", str(port)]
                    argv += ["--shim", str(shim)] if shim else []
                    argv += ["--code", code] if code and contender == "nexus" else []
                    env = code_env(code if contender == "nexus" else None)
                    row.update(run_child(argv, timeout=300, env=env))
                rows.append(row)
                label = "nexus" if contender == "nexus" else "raw gevent"
                print(f"  {label:10} {size >> 10:>5} KiB c={conc:<3} {describe(row)}", flush=True)
    return rows


def describe(row: dict[str, Any]) -> str:
    parts = []
    if "allocated_per_req" in row:
        parts.append(
            f"allocated {row['allocated_per_req'] / 1024:,.0f} KiB/req "
            f"(of which realloc {row['realloc_per_req'] / 1024:,.0f} KiB, {row['big_allocs_per_req']:.1f} allocations >= 16 KiB) "
            f"(extra {row['extra_per_req'] / 1024:,.0f} KiB = {row['extra_bodies']:.2f} bodies)"
        )
    parts.append(f"tracemalloc peak {row['peak_per_req'] / 1024:,.0f} KiB ({row['peak_bodies']:.2f} bodies)")
    return "; ".join(parts)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--code", help="a tree to import nexus_green from (default: this one)")
    ap.add_argument("--before", help="also measure this tree and report the reduction (after = --code or this tree)")
    ap.add_argument("--quick", action="store_true", help="a quarter of the requests")
    ap.add_argument("--no-baseline", action="store_true", help="skip the raw gevent baseline")
    ap.add_argument("--peer", choices=["auto", "c", "embedded"], default="auto")
    ap.add_argument("--out", type=Path, default=RESULTS / "copies.json")
    ap.add_argument("--child", nargs=2, metavar=("CONTENDER", "METHOD"), help=argparse.SUPPRESS)
    ap.add_argument("--size", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--conc", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--requests", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--shim", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        if args.child[0] == "nexus":
            check_code_origin(args.code)
        res = child(args.child[0], args.child[1], args.size, args.conc, args.requests, args.port, args.shim)
        print(json.dumps(res))
        return 0

    shim = build_native(SHIM_SOURCE, SHIM, shared=True)
    if shim is None:
        print("no C compiler: only tracemalloc peaks are measured (no allocation count)")
    peer = start_peer(args.peer)
    print(f"peer: {peer.describe()}")
    trees = [("after", args.code)] if not args.before else [("before", args.before), ("after", args.code)]
    runs = len(SIZES) * len(CONCURRENCY) * (len(trees) + (0 if args.no_baseline else 1)) * (2 if shim else 1)
    print(f"{runs} child runs: about {runs * (1.0 if args.quick else 2.0):.0f} s", flush=True)
    results: dict[str, Any] = {}
    try:
        for name, code in trees:
            print(f"nexus_green from {code or 'this tree'} ({name}):")
            results[name] = measure_tree(code, peer.port, shim, args.quick, ["nexus"])
        if not args.no_baseline:
            print("raw gevent baseline:")
            results["raw_gevent"] = measure_tree(None, peer.port, shim, args.quick, ["gevent"])
    finally:
        stats = peer.stop()

    key = "extra_per_req" if shim else "peak_per_req"
    what = "extra bytes allocated per request" if shim else "tracemalloc peak per request"
    print(f"\n{what} (body size = 1.00 body)\n")
    head = f"{'body':>8} {'conc':>4} " + " ".join(f"{n:>16}" for n in results) + ("  reduction" if args.before else "")
    print(head)
    summary = []
    for i, (size, conc) in enumerate((s, c) for s in SIZES for c in CONCURRENCY):
        cols, entry = [], {"size": size, "conc": conc}
        for name, rows in results.items():
            v = rows[i][key]
            entry[name] = v
            cols.append(f"{v / 1024:>9,.0f} KiB {v / size:>4.2f}")
        line = f"{size >> 10:>4} KiB {conc:>4} " + " ".join(f"{c:>16}" for c in cols)
        if args.before:
            b, a = entry["before"], entry["after"]
            entry["reduction"] = 1 - a / b if b else None
            r = entry["reduction"]
            line += "  -" if r is None else f"  {'down' if r >= 0 else 'UP':>4} {abs(r):.0%}"
        summary.append(entry)
        print(line)
    if args.before:
        print("\ntarget: extra bytes down 70% or more at >= 64 KiB")
    if stats:
        print(f"\npeer {stats}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {"metric": key, "summary": summary, "results": results, "peer": peer.kind, "peer_stats": stats}, indent=1
        )
    )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
