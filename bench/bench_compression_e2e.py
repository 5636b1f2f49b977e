"""Compression end to end: a real Client with CompressionMiddleware against bench/echo_peer.py.

The echo peer answers every request with the same body and the same Tp bits,
so a compressed request comes back as a compressed reply that the Client
decodes: both directions carry the compressed bytes. For each payload
(realistic JSON from bench/bench_compression.py: small ~600 B, 30 KB, 1 MB)
and each variant (no compression; adaptive with its defaults; adaptive told
the link's bandwidth; gzip, lz4, zstd, brotli at their default level) it
measures req/s and bytes on the wire (request + response frames, 24-byte
prefix included), all in one invocation.

Links. Loopback has no bandwidth limit: there, compression can only cost CPU.
So the same runs also go through a user-space shaping proxy (a separate
process that forwards each direction at a fixed rate: every chunk of at most
16 KB is delivered once the link would have carried it; full duplex, no added
propagation delay) at 1 Gbit/s and 100 Mbit/s. This machine has no netem;
the proxy competes for the same 2 cores.

Each (link, variant) runs in its own process, one after another, against the
same echo peer; 16 greenlets call ``client.request(body, timeout=30)`` for
``--seconds`` per payload after a short warm-up (the adaptive analyzer's
probes).

Run: ``python bench/bench_compression_e2e.py [--seconds 3] [--links loopback,1gbit,100mbit]``.
Writes bench/results/compression_e2e.json.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_compression import payload  # noqa: E402
from bench_foundation import RESULTS, cpu_seconds, percentile  # noqa: E402

CONCURRENCY = 16
PREFIX = 24  # Len + the 20-byte header
PAYLOADS = {"small": (600, 1), "30KB": (30_000, 2), "1MB": (1_000_000, 3)}
LINKS = {"loopback": None, "1gbit": 125e6, "100mbit": 12.5e6}
VARIANTS = ("none", "adaptive", "adaptive-link", "gzip", "lz4", "zstd", "brotli")
LOOPBACK_ASSUMED = 1.25e9  # what "adaptive-link" tells the analyzer on loopback (10 Gbit/s)


# ---------------------------------------------------------------- the shaping proxy (its own process)
def _pump(src: socket.socket, dst: socket.socket, rate: float, chunk: int = 16384) -> None:
    due = time.monotonic()
    try:
        while True:
            data = src.recv(chunk)
            if not data:
                break
            now = time.monotonic()
            due = max(due, now) + len(data) / rate  # when the link has finished carrying this chunk
            if due > now:
                time.sleep(due - now)
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def run_proxy(target_port: int, rate: float) -> None:
    lsock = socket.socket()
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(64)
    print(f"listening on 127.0.0.1:{lsock.getsockname()[1]}", flush=True)
    while True:
        client, _ = lsock.accept()
        upstream = socket.create_connection(("127.0.0.1", target_port))
        for s in (client, upstream):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=_pump, args=(client, upstream, rate), daemon=True).start()
        threading.Thread(target=_pump, args=(upstream, client, rate), daemon=True).start()


# ---------------------------------------------------------------- one (link, variant) in a child process
def middlewares(variant: str, link_rate: float | None) -> list[Any]:
    from nexus_green.middleware import CompressionAnalyzer, CompressionMiddleware

    class WireCounter:
        """Innermost: counts the frame bytes that go out (the echo peer sends the same back)."""

        name = "wire-counter"
        order = 10_000

        def __init__(self) -> None:
            self.bytes = 0

        def __call__(self, request: Any, call_next: Any) -> Any:
            self.bytes += PREFIX + len(request.body)
            return call_next(request)

    counter = WireCounter()
    if variant == "none":
        return [counter]
    if variant == "adaptive":
        return [CompressionMiddleware(), counter]
    if variant == "adaptive-link":
        bw = link_rate if link_rate is not None else LOOPBACK_ASSUMED
        return [CompressionMiddleware(analyzer=CompressionAnalyzer(bandwidth=bw)), counter]
    return [CompressionMiddleware(algorithm=variant), counter]


def run_child(variant: str, port: int, link_rate: float | None, seconds: float) -> dict[str, Any]:
    import gevent

    from nexus_green import Client

    out: dict[str, Any] = {}
    for pname, (size, seed) in PAYLOADS.items():
        body = payload(size, seed)
        mws = middlewares(variant, link_rate)
        counter = mws[-1]
        client = Client(f"tcp://127.0.0.1:{port}", heartbeat_interval=None, middlewares=mws)
        client.connect()
        lat: list[float] = []

        def work(until: float, record: bool, client: Any = client, body: bytes = body, lat: list[float] = lat) -> None:
            pc = time.perf_counter
            while True:
                t0 = pc()
                if t0 >= until:
                    return
                r = client.request(body, 1, None, 30.0)
                if r.body != body:
                    raise AssertionError("echo mismatch")
                if record:
                    lat.append(pc() - t0)

        warm = time.perf_counter() + min(1.0, seconds / 3)
        gevent.joinall([gevent.spawn(work, warm, False) for _ in range(CONCURRENCY)], raise_error=True)
        counter.bytes = 0
        t0, c0 = time.perf_counter(), time.process_time()
        stop = t0 + seconds
        gevent.joinall([gevent.spawn(work, stop, True) for _ in range(CONCURRENCY)], raise_error=True)
        elapsed = time.perf_counter() - t0
        cpu = time.process_time() - c0
        n = len(lat)
        comp = next((m for m in mws if m.name == "compression"), None)
        analyzer = getattr(comp, "analyzer", None)
        out[pname] = {
            "payload_bytes": len(body),
            "requests": n,
            "rps": n / elapsed,
            "wire_bytes_per_request": 2 * counter.bytes / max(1, n),  # request frame + the echoed response frame
            "plain_wire_bytes_per_request": 2 * (PREFIX + len(body)),
            "p50_ms": percentile(lat, 0.5) * 1000,
            "p95_ms": percentile(lat, 0.95) * 1000,
            "client_cpu": cpu / elapsed,
            "choice": (analyzer.current or "none")
            if analyzer is not None
            else (variant if variant != "none" else "none"),
            "per_algorithm": dict(comp.stats().per_algorithm) if comp is not None else {},
        }
        client.close()
    return out


# ---------------------------------------------------------------- orchestration
def spawn(argv: list[str]) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen([sys.executable, *argv], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    return proc, int(proc.stdout.readline().rsplit(":", 1)[1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--links", default=",".join(LINKS))
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--child", choices=VARIANTS)
    ap.add_argument("--proxy", type=float, help="(internal) run the shaping proxy at this many bytes/s")
    ap.add_argument("--port", type=int)
    ap.add_argument("--rate", type=float, default=0.0)
    args = ap.parse_args()
    if args.proxy:
        run_proxy(args.port, args.proxy)
        return 0
    if args.child:
        print(json.dumps(run_child(args.child, args.port, args.rate or None, args.seconds)))
        return 0

    links = [link for link in args.links.split(",") if link]
    variants = [v for v in args.variants.split(",") if v]
    peer, peer_port = spawn([str(HERE / "echo_peer.py")])
    proxies: list[subprocess.Popen[str]] = []
    results: dict[str, dict[str, Any]] = {}
    try:
        for link in links:
            rate = LINKS[link]
            port = peer_port
            if rate is not None:
                proxy, port = spawn([__file__, "--proxy", str(rate), "--port", str(peer_port)])
                proxies.append(proxy)
            results[link] = {}
            for variant in variants:
                cpu0, t0 = cpu_seconds(peer.pid), time.perf_counter()
                argv = [
                    sys.executable,
                    __file__,
                    "--child",
                    variant,
                    "--port",
                    str(port),
                    "--seconds",
                    str(args.seconds),
                ]
                if rate is not None:
                    argv += ["--rate", str(rate)]
                out = subprocess.run(argv, capture_output=True, text=True, timeout=args.seconds * 60 + 120, check=True)
                res = json.loads(out.stdout.strip().splitlines()[-1])
                peer_cpu = (cpu_seconds(peer.pid) - cpu0) / (time.perf_counter() - t0)
                for r in res.values():
                    r["peer_cpu"] = peer_cpu
                results[link][variant] = res
                print(f"  {link:<8} {variant:<13} done", file=sys.stderr, flush=True)
    finally:
        for p in [*proxies, peer]:
            p.terminate()
            p.wait(10)

    summary: dict[str, Any] = {}
    print(
        f"\nCompression end to end: Client + CompressionMiddleware -> echo peer, {CONCURRENCY} greenlets, {args.seconds:g}s"
    )
    for link in links:
        print(
            f"\nlink: {link}" + ("" if LINKS[link] is None else f" (shaping proxy, {LINKS[link] * 8 / 1e6:g} Mbit/s)")
        )
        print(
            f"{'payload':<7} {'variant':<13} {'choice':<7} {'req/s':>9} {'vs none':>8} {'wire B/req':>11}"
            f" {'saved':>7} {'p50 ms':>8} {'p95 ms':>8} {'cli CPU':>8}"
        )
        for pname in PAYLOADS:
            base = results[link].get("none", {}).get(pname)
            for variant in variants:
                r = results[link][variant][pname]
                saved = 1 - r["wire_bytes_per_request"] / r["plain_wire_bytes_per_request"]
                change = r["rps"] / base["rps"] - 1 if base else float("nan")
                summary.setdefault(link, {}).setdefault(pname, {})[variant] = {
                    "rps": r["rps"],
                    "throughput_change": change,
                    "wire_saved": saved,
                }
                print(
                    f"{pname:<7} {variant:<13} {str(r['choice']):<7} {r['rps']:>9,.1f} {change:>+8.1%}"
                    f" {r['wire_bytes_per_request']:>11,.0f} {saved:>7.1%} {r['p50_ms']:>8.2f} {r['p95_ms']:>8.2f}"
                    f" {r['client_cpu']:>8.0%}"
                )
        # the targets, for adaptive (defaults) on this link
        if "adaptive" in variants and "none" in variants:
            plain = sum(results[link]["none"][p]["plain_wire_bytes_per_request"] for p in PAYLOADS)
            wire = sum(results[link]["adaptive"][p]["wire_bytes_per_request"] for p in PAYLOADS)
            s30 = summary[link]["30KB"]["adaptive"]
            summary[link]["targets"] = {
                "wire_saved_one_of_each_payload": 1 - wire / plain,
                "throughput_change_30KB": s30["throughput_change"],
            }
            print(
                f"adaptive (defaults): {1 - wire / plain:.1%} fewer bytes on the wire for one message of each payload"
                f" (target >= 40%); 30 KB throughput {s30['throughput_change']:+.1%} vs none (target >= -10%)"
            )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "compression_e2e.json").write_text(
        json.dumps(
            {"seconds": args.seconds, "concurrency": CONCURRENCY, "results": results, "summary": summary}, indent=2
        )
        + "\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
