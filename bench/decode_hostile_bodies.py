"""Issue 12's hostile bodies, timed in real time through a Client, on this code or another checkout.

A frame_peer answers every request with the body of the scenario; a ticker
greenlet wakes every 5 ms and records how late it woke (the hub's worst
stall). Each scenario runs in its own interpreter, killed after ``--kill``
seconds (the code before the fix took 45-60 s on the gzip body).

    gzip_400k        400 000 empty gzip members (8 MB), request(timeout=5)
    gzip_800k_short  800 000 of them (16 MB), request(timeout=0.3): does the budget hold?
    brotli_bomb      1 GiB of zeros in 1.6 KB of brotli, request(timeout=5)
    small_<codec>    Client._decompress of an ordinary 4 KB JSON body (a 300-800 B
                     frame): microseconds per call, best of 7 runs of 5000

Run: ``python bench/decode_hostile_bodies.py [--code PATH] [--label before]``.
Writes bench/results/decode_hostile_bodies.json (or ..._<label>.json).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

SCENARIOS = ["gzip_400k", "gzip_800k_short", "brotli_bomb", "small_gzip", "small_lz4", "small_zstd", "small_brotli"]
MiB = 1 << 20


def _use_code(path: str) -> None:
    """Import nexus_green from ``path`` even where this one is installed in editable mode."""
    sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
    sys.path.insert(0, path)


def _scenario(name: str) -> dict[str, object]:
    import zlib

    import brotli
    import gevent

    from nexus_green import Client
    from nexus_green.protocol.compression import get_codec
    from nexus_green.protocol.frames import Frame
    from nexus_green.testing import frame_peer

    if name.startswith("small_"):
        codec = get_codec(name[len("small_") :])
        data = json.dumps([{"id": i, "name": f"user-{i}", "tags": ["a", "b"], "score": i % 97} for i in range(60)])
        body = codec.compress(data.encode())
        from nexus_green.protocol.messages import Response

        resp = Response(body=body, tp=codec.tp_bits)
        with Client("tcp://127.0.0.1:9", heartbeat_interval=None, min_size=0) as client:
            best = min(_timeit(lambda: client._decompress(resp), 5000) for _ in range(7))
        return {"body_bytes": len(body), "us_per_call": round(best * 1e6, 2)}

    if name.startswith("gzip"):
        co = zlib.compressobj(6, zlib.DEFLATED, 31)
        body, tp = (co.compress(b"") + co.flush()) * (400_000 if name == "gzip_400k" else 800_000), 0x20
        timeout = 5.0 if name == "gzip_400k" else 0.3
    else:
        c = brotli.Compressor(quality=5)
        body = b"".join([c.process(b"\0" * MiB) for _ in range(1024)] + [c.finish()])
        tp, timeout = 0xC0, 5.0

    def handler(frame: Frame) -> list[Frame]:
        return [Frame(qid=frame.qid, fid=frame.fid, code=200, res=1, tp=tp, body=body)]

    lag = [0.0]

    def ticker() -> None:
        loop = gevent.get_hub().loop
        while True:
            loop.update_now()
            before = loop.now()
            gevent.sleep(0.005)
            loop.update_now()
            lag[0] = max(lag[0], loop.now() - before - 0.005)

    with frame_peer(handler) as peer, Client(peer.url, heartbeat_interval=None) as client:
        client.connect(timeout=5)
        tick = gevent.spawn(ticker)
        gevent.sleep(0.05)
        started = time.monotonic()
        try:
            outcome = f"ok, {len(client.request(b'x', fid=1, timeout=timeout).body)} bytes"
        except Exception as exc:
            outcome = f"{type(exc).__name__}: {str(exc)[:70]}"
        seconds = time.monotonic() - started
        gevent.sleep(0.02)  # a wake-up that came due during a stall records it now
        tick.kill()
    return {
        "body_bytes": len(body),
        "timeout_s": timeout,
        "seconds": round(seconds, 3),
        "max_hub_lag_ms": round(lag[0] * 1000, 1),
        "outcome": outcome,
    }


def _timeit(fn: object, n: int) -> float:
    started = time.perf_counter()
    for _ in range(n):
        fn()  # type: ignore[operator]
    return (time.perf_counter() - started) / n


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--code", help="a checkout of nexus_green to measure instead of this one")
    ap.add_argument("--label", default="")
    ap.add_argument("--kill", type=float, default=120.0, help="seconds before a scenario is killed")
    args = ap.parse_args()
    rows = []
    for name in SCENARIOS:
        cmd = [sys.executable, __file__, "--run", name] + (["--code", args.code] if args.code else [])
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=args.kill)
            row = (
                json.loads(done.stdout.strip().splitlines()[-1])
                if done.returncode == 0
                else {"error": done.stderr[-300:]}
            )
        except subprocess.TimeoutExpired:
            row = {"outcome": f"killed after {args.kill} s"}
        row["scenario"] = name
        rows.append(row)
        print(f"{name:16s} " + "  ".join(f"{k}={v}" for k, v in row.items() if k != "scenario"), flush=True)
    out = Path(__file__).parent / "results" / f"decode_hostile_bodies{'_' + args.label if args.label else ''}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"code": args.code or "this checkout", "rows": rows}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    if "--run" in sys.argv:
        if "--code" in sys.argv:
            _use_code(sys.argv[sys.argv.index("--code") + 1])
        name = sys.argv[sys.argv.index("--run") + 1]
        print(json.dumps(_scenario(name)))
        os._exit(0)  # a decode the old code left running in a worker thread must not keep the process alive
    main()
