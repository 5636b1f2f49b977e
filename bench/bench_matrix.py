"""The size x concurrency matrix (issue 14): nexus_green Client against raw gevent, threads, asyncio and uvloop.

Bodies of 64 B, 4 KiB, 64 KiB and 1 MiB, at concurrency 1, 10, 50 and 500,
against one echo peer (the C epoll peer from bench/peers.py when a C compiler
exists, the Python embedded peer otherwise; the run says which). Contenders:

    nexus    one nexus_green Client, N greenlets calling client.request(body, fid=1, timeout=5)
    gevent   raw gevent sockets, one socket per greenlet: sendall(header + body), then recv the exact answer
    threads  one blocking socket per thread (N threads, at most 500), the same loop
    asyncio  asyncio streams, one connection per task
    uvloop   the same asyncio code on uvloop (when uvloop is importable)

Each contender lives in its own child process for the whole run (started
once, so a cell costs its measuring time and not an interpreter start). The
parent walks the cells round after round and, in each cell, runs the
contenders one after the other (the order rotates every round), so every
contender sees the same machine conditions. A run is closed-loop: N workers
send, wait for the answer and send again. The measuring window opens once
``--warmup`` seconds have passed and every worker has had an answer (at 1 MiB
x 500 the first wave takes about a second); the answers completed within the
next ``--seconds`` are counted (requests still in flight at the end are
finished and not counted). A cell's figure is the median
req/s over the rounds; the ratios are nexus / raw gevent and nexus / the best
of the others. The peer's CPU share during each run is reported (a peer near
100% of a core would be the bottleneck).

Run::

    python bench/bench_matrix.py                 # 16 cells x 5 contenders x 3 rounds, about 5 minutes
    python bench/bench_matrix.py --quick         # 6 cells, 1 round, 0.5 s: under a minute
    python bench/bench_matrix.py --only 1MiB/500 --only 64/1 --rounds 5
    python bench/bench_matrix.py --code /tmp/before   # import nexus_green from another tree
    python bench/bench_matrix.py --write-docs     # also regenerate the table in docs/benchmarks.md

To compare code before and after a change: ``git worktree add /tmp/before HEAD``
(before the change), then run once with ``--code /tmp/before --out
bench/results/matrix_before.json`` and once without. Writes
bench/results/matrix.json (or ``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import select
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

from common import PREFIX, RESULTS, ROOT, check_code_origin, code_env, frame, percentile, recv_exact
from peers import Peer, start_peer

SIZES = [64, 4096, 65536, 1 << 20]
CONCURRENCY = [1, 10, 50, 500]
QUICK_SIZES = [64, 65536, 1 << 20]
QUICK_CONCURRENCY = [1, 50]
CONTENDERS = ["nexus", "gevent", "threads", "asyncio", "uvloop"]
MAX_THREADS = 500
MAX_WARMUP = 3.0  # the window opens at the latest this long after the warm-up, even if a worker has no answer yet
INF = float("inf")
DOCS = ROOT / "docs" / "benchmarks.md"
BEGIN, END = "<!-- matrix:begin -->", "<!-- matrix:end -->"


def size_label(n: int) -> str:
    if n >= 1 << 20 and n % (1 << 20) == 0:
        return f"{n >> 20} MiB"
    if n >= 1024 and n % 1024 == 0:
        return f"{n >> 10} KiB"
    return f"{n} B"


def parse_size(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+)\s*(b|k|kb|kib|m|mb|mib)?\s*", text.lower())
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 64, 4KiB, 1MiB)")
    unit = {"": 1, "b": 1, "k": 1024, "kb": 1024, "kib": 1024, "m": 1 << 20, "mb": 1 << 20, "mib": 1 << 20}
    return int(m.group(1)) * unit[m.group(2) or ""]


def parse_only(text: str) -> tuple[Optional[int], Optional[int]]:
    """``SIZE/CONC``, either part may be empty: ``64/50``, ``1MiB/``, ``/500``."""
    if "/" not in text:
        raise argparse.ArgumentTypeError(f"--only wants SIZE/CONC (either may be empty), not {text!r}")
    size, conc = text.split("/", 1)
    return (parse_size(size) if size.strip() else None, int(conc) if conc.strip() else None)


# ---------------------------------------------------------------- contenders (child processes)
class Window:
    """The measuring window of one run: answers completed in [start, end] count.

    The window opens once ``warmup`` seconds have passed *and* every worker has
    had its first answer (at most ``MAX_WARMUP`` seconds after the start): a
    cell like 1 MiB x 500 needs about a second before the first wave of answers
    is back, and a fixed warm-up would measure that ramp instead of the steady
    state.
    """

    def __init__(self, warmup: float, seconds: float, workers: int) -> None:
        now = time.perf_counter()
        self.t0 = now
        self.seconds = seconds
        self.min_start = now + warmup
        self.cap = now + warmup + MAX_WARMUP
        self.waiting = workers  # workers without a first answer yet
        self.start = self.end = INF
        self.lock = threading.Lock()
        self.lat: list[float] = []
        self.errors = 0
        self.first_error = ""

    def answered(self, now: float, first: bool) -> None:
        """A worker got an answer at ``now`` (``first``: its first one); opens the window when it is time."""
        with self.lock:  # threads call this too (only until the window opens)
            if first:
                self.waiting -= 1
            if self.start == INF and now >= self.min_start and (self.waiting <= 0 or now >= self.cap):
                self.start, self.end = now, now + self.seconds

    def error(self, exc: BaseException) -> None:
        self.errors += 1
        if not self.first_error:
            self.first_error = repr(exc)

    def result(self, seconds: float) -> dict[str, Any]:
        lat = sorted(self.lat)
        now = time.perf_counter()
        return {
            "requests": len(lat),
            "rps": len(lat) / seconds,
            "p50_ms": percentile(lat, 0.50) * 1000,
            "p99_ms": percentile(lat, 0.99) * 1000,
            "errors": self.errors,
            "first_error": self.first_error,
            "warmup_s": (self.start if self.start != INF else now) - self.t0,
            "drain_s": max(0.0, now - self.end) if self.end != INF else 0.0,
        }


def sync_loop(w: Window, call: Callable[[], None], keep_going: bool = False) -> None:
    """One closed-loop worker (greenlet or thread): call until the window ends, keep in-window latencies.

    A failed call is counted; it ends the worker (a raw socket is broken after
    one), unless ``keep_going`` (a Client stays usable after a request timed out).
    """
    pc = time.perf_counter
    mine: list[float] = []
    first = True
    try:
        while True:
            t0 = pc()
            if t0 >= w.end:
                return
            try:
                call()
            except Exception as exc:
                if not keep_going:
                    raise
                w.error(exc)
                continue
            t1 = pc()
            if w.start <= t1 <= w.end:
                mine.append(t1 - t0)
            elif w.start == INF:
                w.answered(t1, first)
                first = False
    except Exception as exc:  # a broken socket ends this worker; the run reports it
        w.error(exc)
        if first:
            w.answered(pc(), True)  # it will not answer: do not hold the window for it
    finally:
        w.lat.extend(mine)


def socket_call(sock: Any, body: bytes) -> Callable[[], None]:
    """sendall(header + body) with a fresh Qid, then read the whole answer (the raw baselines)."""
    qid = 0
    n = len(body)

    def call() -> None:
        nonlocal qid
        qid += 1
        sock.sendall(frame(qid, body))
        head = recv_exact(sock, 24)
        length, _tag, _ver, _tp, res, rqid = PREFIX.unpack(head)[:6]
        if res != 1 or rqid != qid or length != 20 + n:
            raise ConnectionError(f"bad answer: res={res} qid={rqid} (sent {qid}) len={length}")
        recv_exact(sock, length - 20)

    return call


def run_nexus(size: int, conc: int, warmup: float, seconds: float, port: int) -> dict[str, Any]:
    import gevent

    from nexus_green import Client

    body = b"x" * size
    client = Client(f"tcp://127.0.0.1:{port}")
    try:
        client.connect()
        resp = client.request(body, fid=1, timeout=5)
        if resp.body != body:
            raise RuntimeError(f"the peer did not echo the body ({len(resp.body)} bytes back for {size})")
        w = Window(warmup, seconds, conc)
        req = client.request

        def call() -> None:
            req(body, fid=1, timeout=5)

        gevent.joinall([gevent.spawn(sync_loop, w, call, True) for _ in range(conc)])
        out = w.result(seconds)
        out["connections"] = client.stats().get("size")
        return out
    finally:
        client.close()


def run_gevent(size: int, conc: int, warmup: float, seconds: float, port: int) -> dict[str, Any]:
    import gevent
    from gevent import socket

    body = b"x" * size
    socks = []
    for _ in range(conc):
        s = socket.create_connection(("127.0.0.1", port))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        socks.append(s)
    try:
        w = Window(warmup, seconds, len(socks))
        gevent.joinall([gevent.spawn(sync_loop, w, socket_call(s, body)) for s in socks])
        return w.result(seconds)
    finally:
        for s in socks:
            s.close()


def run_threads(size: int, conc: int, warmup: float, seconds: float, port: int) -> dict[str, Any]:
    import socket

    body = b"x" * size
    socks = []
    for _ in range(min(conc, MAX_THREADS)):
        s = socket.create_connection(("127.0.0.1", port))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        socks.append(s)
    try:
        w = Window(warmup, seconds, len(socks))
        threads = [threading.Thread(target=sync_loop, args=(w, socket_call(s, body))) for s in socks]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        out = w.result(seconds)
        out["threads"] = len(threads)
        return out
    finally:
        for s in socks:
            s.close()


def run_asyncio(
    size: int, conc: int, warmup: float, seconds: float, port: int, use_uvloop: bool = False
) -> dict[str, Any]:
    import asyncio

    body = b"x" * size

    async def main() -> dict[str, Any]:
        conns = [await asyncio.open_connection("127.0.0.1", port) for _ in range(conc)]
        w = Window(warmup, seconds, len(conns))

        async def worker(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            pc = time.perf_counter
            mine: list[float] = []
            qid = 0
            first = True
            try:
                while True:
                    t0 = pc()
                    if t0 >= w.end:
                        return
                    qid += 1
                    writer.write(frame(qid, body))
                    head = await reader.readexactly(24)
                    length, _tag, _ver, _tp, res, rqid = PREFIX.unpack(head)[:6]
                    if res != 1 or rqid != qid:
                        raise ConnectionError(f"bad answer: res={res} qid={rqid} (sent {qid})")
                    await reader.readexactly(length - 20)
                    t1 = pc()
                    if w.start <= t1 <= w.end:
                        mine.append(t1 - t0)
                    elif w.start == INF:
                        w.answered(t1, first)
                        first = False
            except Exception as exc:
                w.error(exc)
                if first:
                    w.answered(pc(), True)
            finally:
                w.lat.extend(mine)

        try:
            await asyncio.gather(*(worker(r, wr) for r, wr in conns))
            return w.result(seconds)
        finally:
            for _r, wr in conns:
                wr.close()
            await asyncio.gather(*(wr.wait_closed() for _r, wr in conns), return_exceptions=True)

    if use_uvloop:
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(main())
    return asyncio.run(main())


def uvloop_available() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


RUNNERS: dict[str, Callable[..., dict[str, Any]]] = {
    "nexus": run_nexus,
    "gevent": run_gevent,
    "threads": run_threads,
    "asyncio": run_asyncio,
    "uvloop": lambda *a: run_asyncio(*a, use_uvloop=True),
}


def child(name: str, port: int, code: Optional[str]) -> int:
    """Serve run commands from stdin (one JSON line each), answer one JSON line each on stdout."""
    hello: dict[str, Any] = {"contender": name, "pid": os.getpid()}
    if name == "nexus":
        hello["nexus_green_from"] = check_code_origin(code)
    print(json.dumps(hello), flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        t0 = time.perf_counter()
        try:
            res = RUNNERS[name](cmd["size"], cmd["conc"], cmd["warmup"], cmd["seconds"], port)
        except Exception as exc:  # the run is reported as failed; the parent goes on
            res = {"requests": 0, "rps": 0.0, "errors": 1, "first_error": repr(exc), "failed": True}
        res["wall_s"] = time.perf_counter() - t0
        print(json.dumps(res), flush=True)
    return 0


# ---------------------------------------------------------------- orchestration
class Contender:
    """One contender's child process, kept for the whole run."""

    def __init__(self, name: str, port: int, code: Optional[str]) -> None:
        self.name = name
        argv = [sys.executable, __file__, "--child", name, "--port", str(port)]
        if code:
            argv += ["--code", code]
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=code_env(code), bufsize=1
        )
        self.hello = self._read(60)

    def _read(self, timeout: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            self.proc.kill()
            raise RuntimeError(f"contender {self.name} gave no answer within {timeout:.0f} s (exit {self.proc.poll()})")
        return json.loads(line)

    def run(self, size: int, conc: int, warmup: float, seconds: float) -> dict[str, Any]:
        assert self.proc.stdin is not None
        cmd = {"size": size, "conc": conc, "warmup": warmup, "seconds": seconds}
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return self._read(120 + 10 * (warmup + seconds))

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def estimate_run(size: int, conc: int, warmup: float, seconds: float) -> float:
    """Rough seconds one run takes: warm-up and window, conc connections, the first wave and the drain."""
    return warmup + seconds + 0.01 + conc * 0.0004 + 2 * size * conc / 250e6  # the first wave, and the drain


def measure(
    cells: list[tuple[int, int]],
    contenders: list[str],
    peer: Peer,
    rounds: int,
    warmup: float,
    seconds: float,
    code: Optional[str],
) -> dict[str, Any]:
    procs = {name: Contender(name, peer.port, code) for name in contenders}
    runs: dict[tuple[int, int], dict[str, list[dict[str, Any]]]] = {c: {n: [] for n in contenders} for c in cells}
    t_begin = time.perf_counter()
    try:
        for r in range(rounds):
            for size, conc in cells:
                k = r % len(contenders)
                order = contenders[k:] + contenders[:k]
                parts = []
                for name in order:
                    cpu0, t0 = peer.cpu_seconds(), time.perf_counter()
                    res = procs[name].run(size, conc, warmup, seconds)
                    wall = time.perf_counter() - t0
                    res["peer_cpu_s"] = peer.cpu_seconds() - cpu0
                    res["peer_cpu_share"] = res["peer_cpu_s"] / wall if wall > 0 else 0.0
                    res["round"] = r
                    runs[(size, conc)][name].append(res)
                    flag = "!" if res.get("errors") else ""
                    parts.append(f"{name} {res['rps']:,.0f}{flag}")
                print(
                    f"  round {r + 1}/{rounds}  {size_label(size):>6} c={conc:<3}  "
                    + "  ".join(parts)
                    + f"   [{time.perf_counter() - t_begin:,.0f} s]",
                    flush=True,
                )
    finally:
        hello = {name: p.hello for name, p in procs.items()}
        for p in procs.values():
            p.close()
    return {"runs": runs, "hello": hello, "elapsed_s": time.perf_counter() - t_begin}


def summarize(cells: list[tuple[int, int]], contenders: list[str], runs: dict[Any, Any]) -> list[dict[str, Any]]:
    out = []
    for size, conc in cells:
        cell = runs[(size, conc)]
        med = {n: statistics.median(r["rps"] for r in cell[n]) for n in contenders}
        others = {n: v for n, v in med.items() if n != "nexus"}
        best = max(others, key=lambda n: others[n]) if others else None
        nexus = med.get("nexus")
        row: dict[str, Any] = {
            "size": size,
            "conc": conc,
            "median_rps": med,
            "best_other": best,
            "ratio_gevent": nexus / med["gevent"] if nexus is not None and med.get("gevent") else None,
            "ratio_best": nexus / others[best] if nexus is not None and best and others[best] else None,
            "peer_cpu_share_max": max(r["peer_cpu_share"] for n in contenders for r in cell[n]),
            "errors": {n: sum(r.get("errors", 0) for r in cell[n]) for n in contenders},
            "runs": cell,
        }
        out.append(row)
    return out


def fmt_ratio(x: Optional[float]) -> str:
    return "-" if x is None else f"{x:.2f}"


def print_table(rows: list[dict[str, Any]], contenders: list[str]) -> None:
    head = f"{'body':>7} {'conc':>4} " + " ".join(f"{n:>9}" for n in contenders)
    head += f" {'n/gevent':>9} {'n/best':>7} {'best other':>10} {'peer CPU':>9}"
    print("\nreq/s, median over rounds (! = a run had errors)\n")
    print(head)
    for row in rows:
        cols = []
        for n in contenders:
            flag = "!" if row["errors"][n] else " "
            cols.append(f"{row['median_rps'][n]:>8,.0f}{flag}")
        print(
            f"{size_label(row['size']):>7} {row['conc']:>4} "
            + " ".join(cols)
            + f" {fmt_ratio(row['ratio_gevent']):>9} {fmt_ratio(row['ratio_best']):>7}"
            + f" {row['best_other'] or '-':>10} {row['peer_cpu_share_max']:>8.0%}"
        )


def grid(rows: list[dict[str, Any]], key: str) -> list[str]:
    sizes = sorted({r["size"] for r in rows})
    concs = sorted({r["conc"] for r in rows})
    by = {(r["size"], r["conc"]): r for r in rows}
    lines = ["| body \\ concurrency | " + " | ".join(str(c) for c in concs) + " |"]
    lines.append("|---|" + "---|" * len(concs))
    for s in sizes:
        cells = [fmt_ratio(by[(s, c)][key]) if (s, c) in by else "" for c in concs]
        lines.append(f"| {size_label(s)} | " + " | ".join(cells) + " |")
    return lines


def docs_block(rows: list[dict[str, Any]], contenders: list[str], meta: dict[str, Any]) -> str:
    lines = [
        f"Generated by `{meta['command']}` on {meta['date']} ({meta['peer']}; median of {meta['rounds']} "
        f"alternating rounds of {meta['seconds']} s per cell).",
        "",
        "nexus_green / raw gevent:",
        "",
        *grid(rows, "ratio_gevent"),
        "",
        "nexus_green / best of the others (" + ", ".join(n for n in contenders if n != "nexus") + "):",
        "",
        *grid(rows, "ratio_best"),
        "",
        "| body | conc | " + " | ".join(contenders) + " | best other | peer CPU (max) |",
        "|---|---:|" + "---:|" * len(contenders) + "---|---:|",
    ]
    for row in rows:
        vals = " | ".join(
            f"{row['median_rps'][n]:,.0f}" + (" (errors)" if row["errors"][n] else "") for n in contenders
        )
        lines.append(
            f"| {size_label(row['size'])} | {row['conc']} | {vals} | {row['best_other'] or '-'} | "
            f"{row['peer_cpu_share_max']:.0%} |"
        )
    return "\n".join(lines)


def write_docs(block: str, path: Path = DOCS) -> None:
    text = path.read_text()
    if BEGIN not in text or END not in text or text.index(BEGIN) > text.index(END):
        raise SystemExit(f"{path}: the markers {BEGIN} ... {END} are missing; add them where the table goes")
    head, rest = text.split(BEGIN, 1)
    _old, tail = rest.split(END, 1)
    path.write_text(f"{head}{BEGIN}\n{block}\n{END}{tail}")


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds; a cell's figure is the median")
    ap.add_argument("--seconds", type=float, default=1.0, help="measuring window per run")
    ap.add_argument(
        "--warmup",
        type=float,
        default=0.1,
        help="at least this much load (and an answer to every worker) before the window",
    )
    ap.add_argument("--quick", action="store_true", help="6 cells, 1 round, 0.5 s windows: under a minute")
    ap.add_argument("--only", type=parse_only, action="append", default=[], metavar="SIZE/CONC")
    ap.add_argument("--contenders", default=",".join(CONTENDERS), help="comma-separated subset")
    ap.add_argument("--code", help="a tree to import nexus_green from (e.g. a git worktree of older code)")
    ap.add_argument("--peer", choices=["auto", "c", "embedded"], default="auto")
    ap.add_argument("--out", type=Path, default=RESULTS / "matrix.json")
    ap.add_argument("--write-docs", action="store_true", help=f"regenerate the table in {DOCS.relative_to(ROOT)}")
    ap.add_argument("--from-json", type=Path, help="measure nothing: print (and with --write-docs, write) a saved run")
    ap.add_argument("--child", choices=CONTENDERS, help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return child(args.child, args.port, args.code)
    if args.from_json:
        saved = json.loads(args.from_json.read_text())
        print_table(saved["cells"], saved["meta"]["contenders"])
        if args.write_docs:
            write_docs(docs_block(saved["cells"], saved["meta"]["contenders"], saved["meta"]))
            print(f"wrote the table in {DOCS}")
        return 0

    sizes, concs = (QUICK_SIZES, QUICK_CONCURRENCY) if args.quick else (SIZES, CONCURRENCY)
    if args.quick:
        args.rounds = 1 if args.rounds == 3 else args.rounds
        args.seconds = 0.5 if args.seconds == 1.0 else args.seconds
        args.warmup = 0.05 if args.warmup == 0.1 else args.warmup
    if args.only:
        sizes, concs = SIZES + [s for s, _ in args.only if s and s not in SIZES], CONCURRENCY
        concs = concs + [c for _, c in args.only if c and c not in CONCURRENCY]
    cells = [
        (s, c)
        for s in sizes
        for c in concs
        if not args.only or any((fs is None or fs == s) and (fc is None or fc == c) for fs, fc in args.only)
    ]
    contenders = [n.strip() for n in args.contenders.split(",") if n.strip()]
    unknown = set(contenders) - set(CONTENDERS)
    if unknown or not contenders:
        ap.error(f"--contenders: choose from {', '.join(CONTENDERS)}")
    if "uvloop" in contenders and not uvloop_available():
        print("uvloop is not importable: left out (pip install uvloop, or the dev extras)")
        contenders.remove("uvloop")
    if not cells:
        ap.error("--only matched no cell")

    estimate = sum(estimate_run(s, c, args.warmup, args.seconds) for s, c in cells) * len(contenders) * args.rounds
    peer = start_peer(args.peer)
    print(f"peer: {peer.describe()}")
    print(
        f"matrix: {len(cells)} cells x {len(contenders)} contenders ({', '.join(contenders)}) x {args.rounds} rounds, "
        f"{args.warmup} s warm-up + {args.seconds} s per run: about {estimate / 60:.1f} min",
        flush=True,
    )
    try:
        measured = measure(cells, contenders, peer, args.rounds, args.warmup, args.seconds, args.code)
        peer_cpu_total = peer.cpu_seconds()
    finally:
        stats = peer.stop()
    rows = summarize(cells, contenders, measured["runs"])
    print_table(rows, contenders)
    print(
        f"\npeer: {peer.kind}, {peer_cpu_total:.1f} CPU s over {measured['elapsed_s']:.0f} s; "
        f"highest share of a core during one run: {max(r['peer_cpu_share_max'] for r in rows):.0%}"
    )
    if stats:
        print(f"peer {stats}")
    origin = measured["hello"].get("nexus", {}).get("nexus_green_from")
    if origin:
        print(f"nexus_green imported from {origin}")
    command = "python bench/bench_matrix.py " + " ".join(argv if argv is not None else sys.argv[1:])
    meta = {
        "command": command.strip(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "peer": peer.describe().split(" on port")[0],
        "peer_stats": stats,
        "peer_cpu_total_s": peer_cpu_total,
        "rounds": args.rounds,
        "seconds": args.seconds,
        "warmup": args.warmup,
        "contenders": contenders,
        "nexus_green_from": origin,
        "elapsed_s": measured["elapsed_s"],
        "estimate_s": estimate,
        "cpus": os.cpu_count(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "cells": rows}, indent=1))
    print(f"wrote {args.out}")
    if args.write_docs:
        write_docs(docs_block(rows, contenders, meta))
        print(f"wrote the table in {DOCS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
