"""One matrix cell, before against after against raw gevent, interleaved: throughput and process CPU per request.

The matrix (bench_matrix.py) runs one tree of nexus_green per run; cells move
by 20-30% between runs a few minutes apart on this shared machine. To tell
whether a change moved a cell, this runs the cell's three contenders one
after the other in fresh child processes, round after round, against one C
peer, and reports the median of the per-round ratios to raw gevent and the
median process CPU per request (``time.process_time`` of the child over the
measuring window, divided by the requests it completed):

    raw      raw gevent sockets, one per greenlet: sendall(frame), recv the exact answer
    before   a nexus_green Client imported from ``--code DIR`` (a git worktree of older code)
    after    a nexus_green Client from this tree

Each worker loops ``client.request(body, fid=1, timeout=5)`` (or the raw
send/recv); the window opens after ``--warmup`` seconds.

Run::

    git worktree add /tmp/before <commit>
    python bench/bench_ab.py --code /tmp/before --conc 50 --size 4096 --rounds 5
    python bench/bench_ab.py --code /tmp/before --conc 1 --size 64 --seconds 1.5

Writes bench/results/ab.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from common import RESULTS, ROOT, code_env, frame, recv_exact
from peers import start_peer


def child(kind: str, port: int, conc: int, size: int, warmup: float, seconds: float) -> dict[str, Any]:
    """Run one contender in this process: req/s and CPU per request over the window."""
    import gevent

    body = b"x" * size
    count = [0]
    stop = [False]
    origin = ""
    if kind == "raw":
        import gevent.socket

        data = frame(1, body)

        def work() -> None:
            sock = gevent.socket.create_connection(("127.0.0.1", port))
            sock.setsockopt(6, 1, 1)  # TCP_NODELAY, as the Client sets it
            try:
                while not stop[0]:
                    sock.sendall(data)
                    recv_exact(sock, len(data))
                    count[0] += 1
            finally:
                sock.close()

    else:
        import nexus_green
        from nexus_green import Client

        origin = str(Path(nexus_green.__file__).resolve().parent.parent)
        client = Client(f"tcp://127.0.0.1:{port}")

        def work() -> None:
            request = client.request
            while not stop[0]:
                request(body, fid=1, timeout=5)
                count[0] += 1

    glets = [gevent.spawn(work) for _ in range(conc)]
    gevent.sleep(warmup)
    t0, c0, n0 = time.perf_counter(), time.process_time(), count[0]
    gevent.sleep(seconds)
    t1, c1, n1 = time.perf_counter(), time.process_time(), count[0]
    stop[0] = True
    gevent.joinall(glets, timeout=30)
    n = n1 - n0
    return {"rps": n / (t1 - t0), "cpu_us": (c1 - c0) / max(n, 1) * 1e6, "requests": n, "origin": origin}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--code", required=False, help="the 'before' tree (omit to compare raw gevent and this tree only)")
    ap.add_argument("--conc", type=int, default=1)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=1.5)
    ap.add_argument("--warmup", type=float, default=0.3)
    ap.add_argument("--out", default=str(RESULTS / "ab.json"))
    ap.add_argument("--child", nargs=2, metavar=("KIND", "PORT"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        kind, port = args.child
        print(json.dumps(child(kind, int(port), args.conc, args.size, args.warmup, args.seconds)))
        return 0
    contenders = [("raw", None)] + ([("before", args.code)] if args.code else []) + [("after", None)]
    peer = start_peer("auto")
    print(f"peer: {peer.describe()}; {args.size} B x {args.conc} greenlets, {args.rounds} rounds of {args.seconds} s")
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in contenders}
    try:
        for r in range(args.rounds):
            for name, code in contenders:
                cmd = [sys.executable, __file__, "--conc", str(args.conc), "--size", str(args.size)]
                cmd += ["--seconds", str(args.seconds), "--warmup", str(args.warmup), "--child"]
                cmd += ["raw" if name == "raw" else "nexus", str(peer.port)]
                out = subprocess.run(
                    cmd, capture_output=True, text=True, timeout=120, env=code_env(code), cwd=str(ROOT / "bench")
                )
                if out.returncode != 0:
                    raise SystemExit(f"{name} failed:\n{out.stderr}")
                res = json.loads(out.stdout)
                if code and res["origin"] != str(Path(code).resolve()):
                    raise SystemExit(f"{name}: nexus_green was imported from {res['origin']}, not {code}")
                runs[name].append(res)
            line = "  ".join(
                f"{n} {runs[n][-1]['rps']:>9,.0f} req/s {runs[n][-1]['cpu_us']:7.2f} us" for n, _ in contenders
            )
            print(f"  round {r + 1}/{args.rounds}  {line}", flush=True)
    finally:
        peer.stop()
    summary: dict[str, dict[str, float]] = {}
    print()
    for name, _ in contenders:
        ratios = [run["rps"] / raw["rps"] for run, raw in zip(runs[name], runs["raw"], strict=True)]
        summary[name] = {
            "median_rps": statistics.median(run["rps"] for run in runs[name]),
            "median_cpu_us": statistics.median(run["cpu_us"] for run in runs[name]),
            "ratio_raw": statistics.median(ratios),
        }
        s = summary[name]
        rounds = " ".join(f"{x:.2f}" for x in ratios)
        print(
            f"  {name:<7} {s['median_rps']:>9,.0f} req/s  CPU {s['median_cpu_us']:7.2f} us/request"
            f"  / raw gevent {s['ratio_raw']:.3f}  (rounds {rounds})"
        )
    RESULTS.mkdir(exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"size": args.size, "conc": args.conc, "summary": summary, "runs": runs}, f, indent=2)
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
