"""The critical path at concurrency 1 (issue 14): how long a caller's answer takes to become its next request.

At concurrency 1 nothing overlaps: a request's round trip is the send system
call (on loopback it runs the peer's receive path too), the wait for the
answer, and then the client's own work from the moment the answer leaves the
kernel to the moment the next request enters it. That last part, the
*turnaround*, is where a client library costs anything over a raw socket.

This benchmark measures it directly: it wraps the socket calls of each
contender with ``perf_counter_ns`` stamps (about 0.1 us each) and reports, per
request, the median and 90th percentile of

    turnaround   from the receive call that brought the answer back, to the
                 send call of the next request
    send         the send system call itself
    wait         from the send's return to the receive that brings the answer

Contenders, each in its own child process, against the C epoll echo peer
(bench/peers.py), 64-byte bodies by default, alternating rounds:

    nexus     one nexus_green Client, ``client.request(body, fid=1, timeout=5)`` in a loop
    gevent    one raw gevent socket: ``sendall(frame)``, then ``recv`` until the answer is whole
    nexus@DIR with ``--code DIR``: nexus_green imported from another tree (before/after)

Run::

    python bench/bench_turnaround.py                       # 5 rounds x 20,000 requests
    python bench/bench_turnaround.py --code /tmp/before    # adds the older tree as a contender
    python bench/bench_turnaround.py --size 4096 --rounds 3

Writes bench/results/turnaround.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

from common import RESULTS, ROOT, check_code_origin, code_env, frame
from peers import start_peer

WARMUP = 2000


def _summary(values: list[int]) -> dict[str, float]:
    values = sorted(values)
    return {
        "median_us": statistics.median(values) / 1e3,
        "p90_us": values[int(len(values) * 0.9)] / 1e3,
    }


def child(kind: str, port: int, size: int, requests: int) -> dict[str, Any]:
    """Run one contender in this process and return its figures (stamps around the socket calls)."""
    pc = time.perf_counter_ns
    turn: list[int] = []
    send: list[int] = []
    wait: list[int] = []
    last_recv = [0]
    sent_at = [0]
    body = b"x" * size
    if kind == "nexus":
        from nexus_green import Client
        from nexus_green.transport import stream as stream_mod

        cls = stream_mod.Stream
        recv_into, sendmsg = cls.recv_into_nowait, cls.sendmsg_nowait

        def stamped_recv(self: Any, buf: Any) -> int:
            n: int = recv_into(self, buf)
            if n > 0:
                t = pc()
                wait.append(t - sent_at[0])
                last_recv[0] = t
            return n

        def stamped_send(self: Any, buffers: Any) -> int:
            t = pc()
            if last_recv[0]:
                turn.append(t - last_recv[0])
            n: int = sendmsg(self, buffers)
            sent_at[0] = pc()
            send.append(sent_at[0] - t)
            return n

        cls.recv_into_nowait = stamped_recv  # type: ignore[method-assign]
        cls.sendmsg_nowait = stamped_send  # type: ignore[method-assign]
        client = Client(f"tcp://127.0.0.1:{port}", heartbeat_interval=None)
        for _ in range(requests + WARMUP):
            client.request(body, fid=1, timeout=5)
        client.close()
        origin = check_code_origin(None)
    else:
        import gevent.socket

        sock = gevent.socket.create_connection(("127.0.0.1", port))
        sock.setsockopt(6, 1, 1)  # TCP_NODELAY, as the Client sets it
        data = frame(1, body)
        for _ in range(requests + WARMUP):
            t = pc()
            if last_recv[0]:
                turn.append(t - last_recv[0])
            sock.sendall(data)
            sent_at[0] = pc()
            send.append(sent_at[0] - t)
            got = 0
            while got < len(data):
                got += len(sock.recv(len(data) - got))
            last_recv[0] = pc()
            wait.append(last_recv[0] - sent_at[0])
        sock.close()
        origin = ""
    return {
        "origin": origin,
        "turnaround": _summary(turn[WARMUP:]),
        "send": _summary(send[WARMUP:]),
        "wait": _summary(wait[WARMUP:]),
        "requests": requests,
    }


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--requests", type=int, default=20_000)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--code", help="also run nexus_green from this tree (a git worktree of older code)")
    ap.add_argument("--out", default=str(RESULTS / "turnaround.json"))
    ap.add_argument("--child", nargs=3, metavar=("KIND", "PORT", "SIZE"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        kind, port, size = args.child
        print(json.dumps(child(kind, int(port), int(size), args.requests)))
        return 0
    contenders: list[tuple[str, str, Optional[str]]] = [("nexus", "nexus", None), ("gevent", "gevent", None)]
    if args.code:
        contenders.insert(1, (f"nexus@{args.code}", "nexus", args.code))
    peer = start_peer("auto")
    print(f"peer: {peer.describe()}; {args.rounds} rounds x {args.requests:,} requests, {args.size}-byte bodies")
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _, _ in contenders}
    try:
        for r in range(args.rounds):
            order = contenders[r % len(contenders) :] + contenders[: r % len(contenders)]
            for name, kind, code in order:
                out = subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--requests",
                        str(args.requests),
                        "--child",
                        kind,
                        str(peer.port),
                        str(args.size),
                    ],
                    capture_output=True,
                    text=True,
                    timeout=300,
                    env=code_env(code),
                    cwd=str(ROOT / "bench"),
                )
                if out.returncode != 0:
                    raise SystemExit(f"{name} failed:\n{out.stderr}")
                res = json.loads(out.stdout)
                if code and res["origin"] != str(Path(code).resolve()):
                    raise SystemExit(f"{name}: nexus_green was imported from {res['origin']}")
                runs[name].append(res)
                print(
                    f"  round {r + 1}/{args.rounds}  {name:<24} turnaround {res['turnaround']['median_us']:6.2f} us"
                    f"  send {res['send']['median_us']:6.2f}  wait {res['wait']['median_us']:6.2f}",
                    flush=True,
                )
    finally:
        peer.stop()
    print("\nmedians over rounds (us per request)\n")
    print(f"  {'contender':<24} {'turnaround':>10} {'p90':>7} {'send':>7} {'wait':>7} {'round trip':>10}")
    summary: dict[str, dict[str, float]] = {}
    for name, results in runs.items():
        row = {
            key: statistics.median(r[part][stat] for r in results)
            for key, part, stat in (
                ("turnaround", "turnaround", "median_us"),
                ("turnaround_p90", "turnaround", "p90_us"),
                ("send", "send", "median_us"),
                ("wait", "wait", "median_us"),
            )
        }
        row["round_trip"] = row["turnaround"] + row["send"] + row["wait"]
        summary[name] = row
        print(
            f"  {name:<24} {row['turnaround']:10.2f} {row['turnaround_p90']:7.2f} {row['send']:7.2f}"
            f" {row['wait']:7.2f} {row['round_trip']:10.2f}"
        )
    RESULTS.mkdir(exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"size": args.size, "rounds": args.rounds, "summary": summary, "runs": runs}, f, indent=2)
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
